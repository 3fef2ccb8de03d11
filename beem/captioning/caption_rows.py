"""Captions in flight, each at its own position: per-token early exit as a step loop (DESIGN 3.6 and 6).

A step generates one token for every row. Rows join between any two steps (their image keys and values are
computed once, their cache is empty) and leave the moment their caption ends, so a new image never waits for
another caption's last token. Each token walks the decoder layers until its row's policy exits it, decided for all
rows at once by the array form; attention and the feed-forward run only for the rows still walking, and an exited
row gives the layers it skipped keys and values computed from its exit state (state copying, as in CALM).

The key/value cache of every layer is one padded tensor, (R, heads, max_length, head_dim), written at each row's
own position and read through a per-row mask: every row attends over the same padded width whoever its
neighbours are, so a caption comes out the same alone, in a batch, or joining one mid-flight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from beem.captioning.multi_exit_decoder import MultiExitDecoder
from beem.policies.array_policies import ExitObservations, RowPolicies, RowStates, decide
from beem.policies.policy_table import rules_read_entropy


@dataclass(frozen=True)
class DecodedCaption:
    tokens: list[int]  # generated token ids, the end token included when it was produced
    exit_layers: list[int]  # 1-based exit layer of every generated token
    complete: bool = True  # False: abandoned part-way (what it had generated, for accounting)

    @property
    def mean_exit_layer(self) -> float:
        return sum(self.exit_layers) / len(self.exit_layers) if self.exit_layers else 0.0


class CaptionRows:
    def __init__(self, decoder: MultiExitDecoder, start_token: int, end_token: int, max_new_tokens: int) -> None:
        self.decoder = decoder
        self.start_token = start_token
        self.end_token = end_token
        self.width = decoder.spec.max_length  # positions in every cache row
        self.max_new_tokens = min(max_new_tokens, self.width)
        self.num_rows = 0
        self._policies: RowPolicies | None = None
        self._keys: list[torch.Tensor] = []  # per layer (R, heads, width, head_dim)
        self._values: list[torch.Tensor] = []
        self._image_kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer (R, heads, P, head_dim) each
        self._positions = torch.zeros(0, dtype=torch.int64)  # (R,) the position the next token is written at
        self._newest = torch.zeros(0, dtype=torch.int64)  # (R,) the next token's input
        self._tokens = torch.zeros(0, self.width, dtype=torch.int64)  # (R, width) generated so far
        self._exit_layers = torch.zeros(0, self.width, dtype=torch.int64)  # (R, width) each token's exit layer
        self.lengths = np.zeros(0, dtype=np.int64)  # (R,) tokens generated so far (host copy of positions)
        self._rule_codes = np.zeros(0, dtype=np.int64)  # (R,) each row's rule code (host copy)
        self._rules: frozenset[int] = frozenset()
        self._reads_entropy = False

    @torch.inference_mode()
    def join(self, image_features: torch.Tensor, policies: RowPolicies) -> None:
        """New rows (image features (k, P, C), one policy each) start their captions at the next step."""
        count, device, dtype = image_features.shape[0], image_features.device, image_features.dtype
        layer = self.decoder.layer(0)
        empty = torch.zeros((count, layer.num_heads, self.width, layer.head_dim), device=device, dtype=dtype)
        image_kv = self.decoder.image_keys_values(image_features)
        start = torch.full((count,), self.start_token, dtype=torch.int64, device=device)
        blank = torch.zeros((count, self.width), dtype=torch.int64, device=device)
        rule_codes = np.asarray(policies.rule.tolist(), dtype=np.int64)
        if self._policies is None:
            joined = (
                policies,
                [empty.clone() for _ in range(self.decoder.num_layers)],
                [empty.clone() for _ in range(self.decoder.num_layers)],
                image_kv,
                torch.zeros(count, dtype=torch.int64, device=device),
                start,
                blank,
                blank.clone(),
            )
        else:
            joined = (
                self._policies.cat(policies),
                [torch.cat((keys, empty)) for keys in self._keys],
                [torch.cat((values, empty)) for values in self._values],
                [
                    (torch.cat((keys, new_keys)), torch.cat((values, new_values)))
                    for (keys, values), (new_keys, new_values) in zip(self._image_kv, image_kv, strict=True)
                ],
                torch.cat((self._positions, torch.zeros(count, dtype=torch.int64, device=device))),
                torch.cat((self._newest, start)),
                torch.cat((self._tokens, blank)),
                torch.cat((self._exit_layers, blank)),
            )
            rule_codes = np.concatenate((self._rule_codes, rule_codes))
        # Everything new is built before anything is assigned: a join that fails (out of memory) leaves the rows
        # in flight as they were.
        (self._policies, self._keys, self._values, self._image_kv, self._positions, self._newest, self._tokens,
         self._exit_layers) = joined  # fmt: skip
        self.lengths = np.concatenate((self.lengths, np.zeros(count, dtype=np.int64)))
        self._set_rules(rule_codes)
        self.num_rows += count

    @torch.inference_mode()
    def step(self) -> np.ndarray:
        """One token for every row; returns (R,) bool: the rows whose caption is now complete (end token or length
        limit). They stay until `take` removes them.

        Decisions are made for all R rows at every layer (a fixed number of ops whoever has exited; an exited row's
        later decisions are ignored), while attention and the feed-forward run only for the rows still walking."""
        assert self._policies is not None
        decoder, rows = self.decoder, self.num_rows
        everyone = torch.arange(rows, device=self._positions.device)
        inputs = decoder.embed_next(self._newest, self._positions)  # (R, 1, H): each row's input to layer 1
        visible = (torch.arange(self.width, device=inputs.device)[None, :] <= self._positions[:, None])[:, None, None]
        # (R, 1, 1, width): the positions each row may attend to
        labels = torch.zeros(rows, dtype=torch.int64, device=inputs.device)
        exit_layer = torch.zeros(rows, dtype=torch.int64, device=inputs.device)
        walking = torch.ones(rows, dtype=torch.bool, device=inputs.device)  # rows still walking for this token
        all_walking = True
        states = RowStates.fresh(rows, inputs.device)
        observed_labels = labels.clone()
        observed_confidences = torch.zeros(rows, dtype=torch.float64, device=inputs.device)
        observed_entropies = torch.zeros_like(observed_confidences) if self._reads_entropy else None
        for index in range(decoder.num_layers):
            layer = decoder.layer(index)
            # Every row's keys and values go into this layer's cache: an exited row's from its exit state.
            keys, values = layer.key_value(inputs)  # (R, heads, 1, head_dim) each
            self._keys[index][everyone, :, self._positions] = keys[:, :, 0]
            self._values[index][everyone, :, self._positions] = values[:, :, 0]
            image_kv = self._image_kv[index]
            if all_walking:
                outputs = layer.attend(inputs, self._keys[index], self._values[index], image_kv, visible)  # (R, 1, H)
                inputs = outputs
                observed = ExitObservations.from_logits(decoder.exit_logits(index, outputs)[:, -1],
                                                        self._reads_entropy)  # fmt: skip
            else:
                running = walking.nonzero().squeeze(1)  # (A,)
                outputs = layer.attend(inputs[running], self._keys[index][running], self._values[index][running],
                                       (image_kv[0][running], image_kv[1][running]), visible[running])  # fmt: skip
                inputs = inputs.index_copy(0, running, outputs)
                some = ExitObservations.from_logits(decoder.exit_logits(index, outputs)[:, -1], self._reads_entropy)
                observed = ExitObservations(
                    observed_labels.index_copy(0, running, some.labels),
                    observed_confidences.index_copy(0, running, some.confidences),
                    None if some.entropies is None or observed_entropies is None
                    else observed_entropies.index_copy(0, running, some.entropies),
                )  # fmt: skip
            states, exits = decide(states, observed, self._policies, self._rules)
            leaving = exits & walking if not all_walking else exits
            labels = torch.where(leaving, observed.labels, labels)
            exit_layer = torch.where(leaving, index + 1, exit_layer)
            walking = walking & ~exits
            if not bool(walking.any()):
                self._copy_state_to_skipped_layers(index, inputs, everyone)
                break
            all_walking = all_walking and not bool(exits.any())
        self._tokens[everyone, self._positions] = labels
        self._exit_layers[everyone, self._positions] = exit_layer
        self._newest = labels
        self._positions = self._positions + 1
        self.lengths = self.lengths + 1
        ended = (labels == self.end_token).cpu().numpy()  # the step's one read back
        return ended | (self.lengths >= self.max_new_tokens)

    def _copy_state_to_skipped_layers(self, exited_at: int, inputs: torch.Tensor, everyone: torch.Tensor) -> None:
        """Every row left by layer `exited_at` (0-based): the later layers get keys and values computed from each
        row's exit state, as if it had been their input."""
        for index in range(exited_at + 1, self.decoder.num_layers):
            keys, values = self.decoder.layer(index).key_value(inputs)
            self._keys[index][everyone, :, self._positions] = keys[:, :, 0]
            self._values[index][everyone, :, self._positions] = values[:, :, 0]

    def _set_rules(self, codes: np.ndarray) -> None:
        """The rules among the rows: the array form computes only theirs (and the entropy only when read)."""
        self._rule_codes = codes
        self._rules = frozenset(np.unique(codes).tolist())
        self._reads_entropy = rules_read_entropy(self._rules)

    def captions(self, rows: np.ndarray) -> list[DecodedCaption]:
        """What rows (indices) have generated so far (reads back only these rows)."""
        index = torch.from_numpy(rows).to(self._tokens.device)
        tokens, layers = self._tokens[index].tolist(), self._exit_layers[index].tolist()
        return [DecodedCaption(tokens[slot][:length], layers[slot][:length])
                for slot, length in enumerate(self.lengths[rows].tolist())]  # fmt: skip

    def take(self, keep: np.ndarray) -> None:
        """Keep the rows where `keep` (R,) is True; the others leave."""
        assert self._policies is not None
        if keep.all():
            return
        index = torch.from_numpy(np.flatnonzero(keep)).to(self._tokens.device)
        self._policies = self._policies.take(index)
        self._set_rules(self._rule_codes[keep])
        self._keys = [keys[index] for keys in self._keys]
        self._values = [values[index] for values in self._values]
        self._image_kv = [(keys[index], values[index]) for keys, values in self._image_kv]
        self._positions, self._newest = self._positions[index], self._newest[index]
        self._tokens, self._exit_layers = self._tokens[index], self._exit_layers[index]
        self.lengths = self.lengths[keep]
        self.num_rows = int(keep.sum())
