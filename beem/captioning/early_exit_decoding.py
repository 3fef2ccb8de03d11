"""Greedy caption decoding with a per-token early exit (DESIGN 3.6).

Every generated token walks the decoder layers and the same array-form policies as classification decide after
each exit head (label = token id, confidence = its probability). A token that leaves at layer i gives the layers it
skipped keys and values from its exit state, so later tokens find them there (`caption_rows.CaptionRows`, the step
loop the server runs too). `reference_decode` recomputes every step from scratch without a cache, with the
per-sample reference `ExitPolicy.step`, freezing each earlier token's state at its recorded exit: the cached
decoder must agree with it token for token (the test of the cache, of the state copying and of the array form).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from beem.captioning.caption_rows import CaptionRows, DecodedCaption
from beem.captioning.multi_exit_decoder import LayerCache, MultiExitDecoder
from beem.policies.array_policies import RowPolicies, summarize_exits
from beem.policies.exit_policies import ExitObservation, ExitPolicy, PolicyState

__all__ = ["DecodedCaption", "decode_batch", "decode_greedy", "reference_decode"]


@torch.inference_mode()
def decode_batch(
    decoder: MultiExitDecoder,
    image_features: torch.Tensor,  # (B, P, image_feature_size)
    policies: Sequence[ExitPolicy],  # one per row: rows of a batch may use different policies
    start_token: int,
    end_token: int,
    max_new_tokens: int,
    abandoned: Callable[[int], bool] | None = None,  # row -> stop spending compute on it (its client left)
    on_finished: Callable[[int, DecodedCaption], None] | None = None,  # as soon as a row is done or abandoned
) -> list[DecodedCaption | None]:
    """Greedy decoding of images that start together, every row with its own per-token early exit: the step loop
    of `CaptionRows` (what the server runs) with no rows joining later.

    A row is finished at the end token or the length limit and leaves at once. Abandoned rows leave too: None in
    the result, and `on_finished` gets what they had generated with `complete=False`."""
    num_rows, num_layers = image_features.shape[0], decoder.num_layers
    results: list[DecodedCaption | None] = [None] * num_rows
    rows = CaptionRows(decoder, start_token, end_token, max_new_tokens)
    rows.join(image_features, RowPolicies.of(policies, [num_layers] * num_rows, num_layers, image_features.device))
    original = np.arange(num_rows)  # the caller's index of each row still decoding
    while rows.num_rows:
        finished = rows.step()
        gone = np.zeros_like(finished)
        if abandoned is not None:
            asked = np.fromiter((abandoned(int(row)) for row in original), dtype=bool, count=len(original))
            gone = asked & ~finished
        leaving = np.flatnonzero(finished | gone)
        for slot, generated in zip(leaving, rows.captions(leaving), strict=True):
            row = int(original[slot])
            caption = replace(generated, complete=bool(finished[slot]))
            results[row] = caption if caption.complete else None
            if on_finished is not None:
                on_finished(row, caption)
        keep = ~(finished | gone)
        rows.take(keep)
        original = original[keep]
    return results


def decode_greedy(
    decoder: MultiExitDecoder,
    image_features: torch.Tensor,  # (1, P, image_feature_size)
    policy: ExitPolicy,
    start_token: int,
    end_token: int,
    max_new_tokens: int,
) -> DecodedCaption:
    """One image: `decode_batch` with a single row."""
    decoded = decode_batch(decoder, image_features, [policy], start_token, end_token, max_new_tokens)[0]
    assert decoded is not None
    return decoded


def _observe(logits: torch.Tensor) -> ExitObservation:
    """(vocab,) logits of the newest position -> what the policy sees."""
    label, confidence, entropy = summarize_exits(logits)
    return ExitObservation(int(label), float(confidence), float(entropy))


@torch.inference_mode()
def reference_decode(
    decoder: MultiExitDecoder,
    image_features: torch.Tensor,
    policy: ExitPolicy,
    start_token: int,
    end_token: int,
    max_new_tokens: int,
) -> DecodedCaption:
    """No cache: at every step the whole prefix is recomputed; a position that exited at layer e keeps its
    layer-e state as its input to every later layer (what state copying promises)."""
    image_kv = decoder.image_keys_values(image_features)
    prefix = [start_token]
    tokens: list[int] = []
    exit_layers: list[int] = []
    for _ in range(min(max_new_tokens, decoder.spec.max_length)):
        hidden = decoder.embed_tokens(torch.tensor([prefix], device=image_features.device), 0)  # (1, T, H)
        frozen_after = [*exit_layers, decoder.num_layers]  # exit layer of each input position; the newest runs on
        state = PolicyState()
        for index in range(decoder.num_layers):
            updated = decoder.run_layer(index, hidden, LayerCache(), image_kv[index])
            keep = torch.tensor([layer <= index for layer in frozen_after], device=hidden.device)  # (T,)
            hidden = torch.where(keep[None, :, None], hidden, updated)
            observation = _observe(decoder.exit_logits(index, hidden)[0, -1])
            decision = policy.step(state, observation, decoder.num_layers)
            state = decision.state
            if decision.exit_now:
                break
        tokens.append(observation.label)
        exit_layers.append(state.layers_seen)
        prefix.append(observation.label)
        if observation.label == end_token:
            break
    return DecodedCaption(tokens, exit_layers)
