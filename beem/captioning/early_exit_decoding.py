"""Greedy caption decoding with a per-token early exit (DESIGN 3.6).

Every generated token walks the decoder layers and the same `ExitPolicy` code as classification decides after
each exit head (label = token id, confidence = its probability). A token that leaves at layer i gets its keys and
values copied into the layers it skipped, so later tokens find them there. `reference_decode` recomputes every
step from scratch without a cache, freezing each earlier token's state at its recorded exit: the cached decoder
must agree with it token for token (the test of the cache and of the state copying).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from beem.calibration.exit_cache import exit_summaries
from beem.captioning.multi_exit_decoder import LayerCache, MultiExitDecoder
from beem.policies.exit_policies import ExitObservation, ExitPolicy, PolicyState


@dataclass(frozen=True)
class DecodedCaption:
    tokens: list[int]  # generated token ids, the end token included when it was produced
    exit_layers: list[int]  # 1-based exit layer of every generated token

    @property
    def mean_exit_layer(self) -> float:
        return sum(self.exit_layers) / len(self.exit_layers) if self.exit_layers else 0.0


def _observe(logits: torch.Tensor) -> ExitObservation:
    """(vocab,) logits of the newest position -> what the policy sees."""
    label, confidence, entropy = exit_summaries(logits)
    return ExitObservation(int(label), float(confidence), float(entropy))


@torch.inference_mode()
def decode_greedy(
    decoder: MultiExitDecoder,
    image_features: torch.Tensor,  # (1, P, image_feature_size)
    policy: ExitPolicy,
    start_token: int,
    end_token: int,
    max_new_tokens: int,
) -> DecodedCaption:
    image_kv = decoder.image_keys_values(image_features)
    caches = [LayerCache() for _ in range(decoder.num_layers)]
    token = start_token
    tokens: list[int] = []
    exit_layers: list[int] = []
    for position in range(min(max_new_tokens, decoder.spec.max_length)):
        hidden = decoder.embed_tokens(torch.tensor([[token]], device=image_features.device), position)  # (1, 1, H)
        state = PolicyState()
        for index in range(decoder.num_layers):
            hidden = decoder.run_layer(index, hidden, caches[index], image_kv[index])
            observation = _observe(decoder.exit_logits(index, hidden)[0, -1])
            decision = policy.step(state, observation, decoder.num_layers)
            state = decision.state
            if decision.exit_now:
                decoder.copy_state_to_skipped_layers(index, hidden, caches)
                break
        token = observation.label
        tokens.append(token)
        exit_layers.append(state.layers_seen)
        if token == end_token:
            break
    return DecodedCaption(tokens, exit_layers)


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
