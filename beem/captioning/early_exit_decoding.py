"""Greedy caption decoding with a per-token early exit (DESIGN 3.6).

Every generated token walks the decoder layers and the same `ExitPolicy` code as classification decides after
each exit head (label = token id, confidence = its probability). A token that leaves at layer i gets its keys and
values copied into the layers it skipped, so later tokens find them there. `reference_decode` recomputes every
step from scratch without a cache, freezing each earlier token's state at its recorded exit: the cached decoder
must agree with it token for token (the test of the cache and of the state copying).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from beem.captioning.multi_exit_decoder import LayerCache, MultiExitDecoder
from beem.policies.array_policies import summarize_exits as exit_summaries
from beem.policies.exit_policies import ExitObservation, ExitPolicy, PolicyState


@dataclass(frozen=True)
class DecodedCaption:
    tokens: list[int]  # generated token ids, the end token included when it was produced
    exit_layers: list[int]  # 1-based exit layer of every generated token
    complete: bool = True  # False: abandoned part-way (what it had generated, for accounting)

    @property
    def mean_exit_layer(self) -> float:
        return sum(self.exit_layers) / len(self.exit_layers) if self.exit_layers else 0.0


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
    """Greedy decoding of a batch, every row with its own per-token early exit.

    All rows advance one position per step, so every layer's cache holds the same number of positions for all
    rows. Within a step a row leaves the layer walk when its policy says so; at the following layers it only
    contributes keys and values computed from its exit state (state copying), and attention runs for the rows
    still walking. A row is finished at the end token or the length limit and leaves the batch at once, so its
    answer never waits for longer captions. Abandoned rows leave too: None in the result, and `on_finished` gets
    what they had generated with `complete=False`."""
    num_rows, num_layers = image_features.shape[0], decoder.num_layers
    results: list[DecodedCaption | None] = [None] * num_rows
    rows = list(range(num_rows))  # original index of each row still decoding
    tokens: list[list[int]] = [[] for _ in range(num_rows)]
    exit_layers: list[list[int]] = [[] for _ in range(num_rows)]
    image_kv = decoder.image_keys_values(image_features)  # per layer: (R, heads, P, head_dim) each
    caches = [LayerCache() for _ in range(num_layers)]
    device = image_features.device
    newest = torch.full((num_rows, 1), start_token, dtype=torch.long, device=device)  # (R, 1)
    for position in range(min(max_new_tokens, decoder.spec.max_length)):
        inputs = decoder.embed_tokens(newest, position)  # (R, 1, H): each row's input to the first layer
        labels, states = _walk_layers(decoder, inputs, caches, image_kv, [policies[row] for row in rows])
        keep = []
        for slot, row in enumerate(rows):
            tokens[row].append(labels[slot])
            exit_layers[row].append(states[slot].layers_seen)
            done = labels[slot] == end_token or len(tokens[row]) >= max_new_tokens
            if done or (abandoned is not None and abandoned(row)):
                decoded = DecodedCaption(tokens[row], exit_layers[row], complete=done)
                results[row] = decoded if done else None
                if on_finished is not None:
                    on_finished(row, decoded)
            else:
                keep.append(slot)
        if not keep:
            rows = []
            break
        if len(keep) < len(rows):
            selector = torch.tensor(keep, device=device)
            for cache in caches:
                cache.select_rows(selector)
            image_kv = [(keys[selector], values[selector]) for keys, values in image_kv]
            rows = [rows[slot] for slot in keep]
        newest = torch.tensor([[labels[slot]] for slot in keep], dtype=torch.long, device=device)
    for row in rows:  # the decoder's own length limit ended the captions still running
        if results[row] is None:
            decoded = DecodedCaption(tokens[row], exit_layers[row])
            results[row] = decoded
            if on_finished is not None:
                on_finished(row, decoded)
    return results


def _walk_layers(
    decoder: MultiExitDecoder,
    inputs: torch.Tensor,  # (R, 1, H): the newest position's embedding for every row
    caches: list[LayerCache],
    image_kv: list[tuple[torch.Tensor, torch.Tensor]],
    policies: list[ExitPolicy],  # one per row
) -> tuple[list[int], list[PolicyState]]:
    """One token for every row: walk the layers until each row's policy exits; every layer's cache still gets
    every row's keys and values. Returns each row's token and final policy state (its exit layer)."""
    num_rows, num_layers, device = inputs.shape[0], decoder.num_layers, inputs.device
    states = [PolicyState() for _ in range(num_rows)]
    labels = [-1] * num_rows
    running = list(range(num_rows))  # rows still walking the layers for this token
    for index in range(num_layers):
        selector = None if len(running) == num_rows else torch.tensor(running, device=device)
        outputs = decoder.step_layer(index, inputs, selector, caches[index], image_kv[index])  # (A, 1, H)
        # An exited row's output is its exit state: the input every later layer copies its keys from.
        inputs = outputs if selector is None else inputs.index_copy(0, selector, outputs)
        observed = exit_summaries(decoder.exit_logits(index, outputs)[:, -1])  # 3 x (A,)
        still = []
        for row, label, confidence, entropy in zip(running, *(t.tolist() for t in observed), strict=True):
            decision = policies[row].step(states[row], ExitObservation(label, confidence, entropy), num_layers)
            states[row], labels[row] = decision.state, label
            if not decision.exit_now:
                still.append(row)
        running = still
        if not running:
            decoder.copy_state_to_skipped_layers(index, inputs, caches)
            break
    return labels, states


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
    label, confidence, entropy = exit_summaries(logits)
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
