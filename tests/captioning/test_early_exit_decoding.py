"""Per-token early exit with a KV cache and state copying, on a tiny seeded decoder (issue 5's core)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from beem.captioning.caption_rows import CaptionRows
from beem.captioning.early_exit_decoding import DecodedCaption, decode_batch, decode_greedy, reference_decode
from beem.captioning.multi_exit_decoder import DecoderSpec, LayerCache, MultiExitDecoder
from beem.policies.array_policies import RowPolicies
from beem.policies.exit_policies import BeemPolicy, FullDepthPolicy, MaxProbPolicy, beem_c_weights

SPEC = DecoderSpec(vocab_size=24, num_layers=4, hidden_size=32, num_heads=4, ffn_size=64, max_length=16,
                   image_feature_size=12, dropout=0.0)  # fmt: skip
START, END = 1, 2


def _decoder(seed: int) -> MultiExitDecoder:
    torch.manual_seed(seed)
    decoder = MultiExitDecoder(SPEC).double().eval()
    with torch.no_grad():
        # Strong position and image signals, so the untrained decoder does not just repeat its input token
        # (the tied output projection favours it): tokens then vary by step and by image.
        decoder.position_embedding.weight.mul_(3)
        decoder.image_projection.weight.mul_(4)
        # Later exits sharper, as in a trained model, so tokens leave at different layers.
        for norm, sharpness in zip(decoder.exit_norms, (0.05, 0.1, 0.2, 0.4), strict=True):
            norm.weight.mul_(sharpness)
    return decoder


def _image(seed: int) -> torch.Tensor:
    return torch.randn(1, 5, SPEC.image_feature_size, generator=torch.Generator().manual_seed(seed)).double()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "policy",
    [MaxProbPolicy(0.1), MaxProbPolicy(0.3), BeemPolicy("beem-c", beem_c_weights(4), 0.3), FullDepthPolicy()],
    ids=["max-prob-0.1", "max-prob-0.3", "beem-c", "full"],
)
def test_cached_decoding_with_state_copying_equals_the_uncached_reference(seed: int, policy: object) -> None:
    decoder, image = _decoder(seed), _image(seed)
    cached = decode_greedy(decoder, image, policy, START, END, max_new_tokens=12)  # type: ignore[arg-type]
    reference = reference_decode(decoder, image, policy, START, END, max_new_tokens=12)  # type: ignore[arg-type]
    assert cached.tokens == reference.tokens
    assert cached.exit_layers == reference.exit_layers
    assert all(1 <= layer <= SPEC.num_layers for layer in cached.exit_layers)


def test_some_tokens_really_leave_early() -> None:
    """Guards the test above against passing vacuously: the policies do exit at different layers."""
    layers = set()
    for seed in range(6):
        layers |= set(decode_greedy(_decoder(seed), _image(seed), MaxProbPolicy(0.3), START, END, 12).exit_layers)
    assert len(layers) >= 2 and min(layers) < SPEC.num_layers


@pytest.mark.parametrize("seed", range(4))
def test_infinite_alpha_equals_full_depth(seed: int) -> None:
    decoder, image = _decoder(seed), _image(seed)
    never = BeemPolicy("beem-a", (0.9,) * SPEC.num_layers, math.inf)
    beem = decode_greedy(decoder, image, never, START, END, max_new_tokens=12)
    full = decode_greedy(decoder, image, FullDepthPolicy(), START, END, max_new_tokens=12)
    assert beem.tokens == full.tokens
    assert beem.exit_layers == full.exit_layers == [SPEC.num_layers] * len(full.tokens)


def test_teacher_forced_exits_match_the_cached_step_by_step_run() -> None:
    """Training's one-pass forward (every exit, causal) and the decoder's cached path compute the same logits."""
    decoder, image = _decoder(0), _image(0)
    tokens = torch.tensor([[START, 5, 9, 3, 7]])
    all_exits = decoder.forward_all_exits(tokens, image)  # (L, 1, T, V)
    image_kv = decoder.image_keys_values(image)
    caches = [LayerCache() for _ in range(SPEC.num_layers)]
    with torch.no_grad():
        for position in range(tokens.shape[1]):
            hidden = decoder.embed_tokens(tokens[:, position : position + 1], position)
            for index in range(SPEC.num_layers):
                hidden = decoder.run_layer(index, hidden, caches[index], image_kv[index])
                torch.testing.assert_close(decoder.exit_logits(index, hidden)[0, 0], all_exits[index, 0, position])


MIXED_POLICIES = [MaxProbPolicy(0.1), MaxProbPolicy(0.3), BeemPolicy("beem-c", beem_c_weights(4), 0.3),
                  FullDepthPolicy()]  # fmt: skip


@pytest.mark.parametrize("seed", range(3))
def test_a_batch_with_mixed_policies_decodes_every_row_as_it_would_alone(seed: int) -> None:
    """Rows leave layers (and the batch) at different times; each still gets exactly its single-image result."""
    decoder = _decoder(seed)
    images = torch.cat([_image(seed * 10 + row) for row in range(8)])  # (8, 5, C)
    policies = [MIXED_POLICIES[row % len(MIXED_POLICIES)] for row in range(8)]
    # An end token that row 0 produces at its fifth step, so rows stop at different steps.
    unended = decode_batch(decoder, images, policies, START, -1, 12)[0]
    assert unended is not None
    end = unended.tokens[4]
    finished_order: list[int] = []
    batched = decode_batch(decoder, images, policies, START, end, 12,
                           on_finished=lambda row, _: finished_order.append(row))  # fmt: skip
    for row in range(8):
        alone = decode_greedy(decoder, images[row : row + 1], policies[row], START, end, 12)
        assert batched[row] == alone
    assert sorted(finished_order) == list(range(8))
    lengths = [len(caption.tokens) for caption in batched if caption is not None]
    assert len(set(lengths)) > 1, "rows should finish at different steps for this test to mean something"


def test_an_abandoned_row_leaves_the_batch_and_the_others_are_unchanged() -> None:
    decoder = _decoder(1)
    images = torch.cat([_image(row) for row in range(4)])
    policies = [MaxProbPolicy(0.3)] * 4
    full = decode_batch(decoder, images, policies, START, END, 12)
    steps = {"count": 0}

    def abandoned(row: int) -> bool:
        steps["count"] += 1
        return row == 2

    partial = decode_batch(decoder, images, policies, START, END, 12, abandoned=abandoned)
    assert partial[2] is None
    assert [partial[row] for row in (0, 1, 3)] == [full[row] for row in (0, 1, 3)]
    assert steps["count"] > 0


def test_the_length_limit_ends_every_caption() -> None:
    decoder = _decoder(2)
    images = torch.cat([_image(row) for row in range(3)])
    decoded = decode_batch(decoder, images, [FullDepthPolicy()] * 3, START, end_token=-1, max_new_tokens=5)
    assert all(caption is not None and len(caption.tokens) == 5 for caption in decoded)


@pytest.mark.parametrize("abandon_after_tokens", [1, 4, 5])
def test_every_row_is_reported_once_and_an_abandoned_row_says_what_it_ran(abandon_after_tokens: int) -> None:
    """Abandoned at any step, the last one (5) included: one report per row, and the partial caption's exits."""
    decoder = _decoder(3)
    images = torch.cat([_image(row) for row in range(3)])
    reports: list[tuple[int, bool, int]] = []
    counts = dict.fromkeys(range(3), 0)

    def abandoned(row: int) -> bool:
        counts[row] += 1
        return row == 1 and counts[row] >= abandon_after_tokens

    def report(row: int, caption: DecodedCaption) -> None:
        reports.append((row, caption.complete, len(caption.exit_layers)))

    decoded = decode_batch(decoder, images, [FullDepthPolicy()] * 3, START, -1, 5, abandoned, report)
    assert sorted(row for row, _, _ in reports) == [0, 1, 2]
    complete = {row: (done, length) for row, done, length in reports}
    if abandon_after_tokens < 5:
        assert decoded[1] is None and complete[1] == (False, abandon_after_tokens)
    else:  # the length limit came with the same token: the caption is complete
        assert decoded[1] is not None and complete[1] == (True, 5)
    assert complete[0] == complete[2] == (True, 5)


@pytest.mark.parametrize("seed", range(3))
def test_a_caption_joining_others_mid_flight_is_the_same_as_alone(seed: int) -> None:
    """The serving step loop: images join between token steps at other rows' positions (and rows leave as they
    finish); every caption still equals its single-image decoding, token for token and exit for exit."""
    decoder = _decoder(seed)
    images = torch.cat([_image(seed * 10 + row) for row in range(6)])
    policies = [MIXED_POLICIES[row % len(MIXED_POLICIES)] for row in range(6)]
    end = decode_greedy(decoder, images[:1], policies[0], START, -1, 12).tokens[4]  # row 0 ends at its fifth step
    alone = [decode_greedy(decoder, images[row : row + 1], policies[row], START, end, 12) for row in range(6)]
    rows = CaptionRows(decoder, START, end, 12)
    joined_at = {0: [0, 1], 2: [2], 3: [3, 4], 6: [5]}  # step -> the images that join before it
    order: list[int] = []  # original index of each row in flight
    results: dict[int, DecodedCaption] = {}
    step = 0
    while len(results) < 6:
        for row in joined_at.get(step, []):
            rows.join(images[row : row + 1], RowPolicies.of([policies[row]], [SPEC.num_layers], SPEC.num_layers, "cpu"))
            order.append(row)
        if rows.num_rows:
            finished = rows.step()
            for slot, caption in zip(np.flatnonzero(finished), rows.captions(np.flatnonzero(finished)), strict=True):
                results[order[slot]] = caption
            rows.take(~finished)
            order = [row for row, done in zip(order, finished, strict=True) if not done]
        step += 1
    assert [results[row] for row in range(6)] == alone
    assert len({len(caption.tokens) for caption in alone}) > 1
