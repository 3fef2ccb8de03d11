"""Run the model once over a split and keep what every exit said about every sample (DESIGN 3.3, step 1).

Every policy is a deterministic function of this cache, so thresholds are searched without the model, and the
same cache on the test split gives each policy's test accuracy and exit depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from transformers import PreTrainedTokenizerBase

from beem.data.examples import LabelledDataset
from beem.data.tokenized_batch import tokenize_examples
from beem.model.multi_exit_model import MultiExitModel
from beem.policies.array_policies import ExitObservations, exit_margins, summarize_exits
from beem.policies.exit_policies import ExitObservation


@dataclass(frozen=True)
class ExitCache:
    exit_labels: np.ndarray  # (N, L) int64, argmax of each exit
    confidences: np.ndarray  # (N, L) float64, max probability of each exit
    entropies: np.ndarray  # (N, L) float64, entropy of each exit's distribution (nats)
    targets: np.ndarray  # (N,) int64, true labels
    margins: np.ndarray | None = None  # (N, L) float64, max probability minus the runner-up's; None in caches
    # written before the exit gate read it (policies that read margins are then not calibrated from it)

    @property
    def num_samples(self) -> int:
        return int(self.exit_labels.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.exit_labels.shape[1])

    def correct(self) -> np.ndarray:
        """(N, L) bool: exit i right about sample n."""
        return self.exit_labels == self.targets[:, None]

    def exit_accuracies(self) -> np.ndarray:
        return self.correct().mean(axis=0)

    def observations(self, sample: int) -> list[ExitObservation]:
        margins = self.margins[sample] if self.margins is not None else np.zeros(self.num_layers)
        return [
            ExitObservation(int(label), float(confidence), float(entropy), float(margin))
            for label, confidence, entropy, margin in zip(
                self.exit_labels[sample], self.confidences[sample], self.entropies[sample], margins, strict=True
            )
        ]

    def exit_observations(self, layer: int) -> ExitObservations:
        """What exit `layer` (0-based) said about every sample, as the array-form policies read it."""
        return ExitObservations(
            torch.from_numpy(self.exit_labels[:, layer].astype(np.int64)),
            torch.from_numpy(self.confidences[:, layer].astype(np.float64)),
            torch.from_numpy(self.entropies[:, layer].astype(np.float64)),
            None if self.margins is None else torch.from_numpy(self.margins[:, layer].astype(np.float64)),
        )

    def take(self, rows: np.ndarray) -> ExitCache:
        margins = None if self.margins is None else self.margins[rows]
        return ExitCache(self.exit_labels[rows], self.confidences[rows], self.entropies[rows], self.targets[rows],
                         margins)  # fmt: skip

    def save(self, path: Path) -> None:
        # float32 on disk is lossless: the values are float32 softmax outputs widened to float64 in memory.
        arrays = {
            "exit_labels": self.exit_labels,
            "confidences": self.confidences.astype(np.float32),
            "entropies": self.entropies.astype(np.float32),
            "targets": self.targets,
        }
        if self.margins is not None:
            arrays["margins"] = self.margins.astype(np.float32)
        save_file(arrays, str(path))

    @classmethod
    def load(cls, path: Path) -> ExitCache:
        arrays = load_file(str(path))
        return cls(
            arrays["exit_labels"],
            arrays["confidences"].astype(np.float64),
            arrays["entropies"].astype(np.float64),
            arrays["targets"],
            arrays["margins"].astype(np.float64) if "margins" in arrays else None,
        )


@torch.inference_mode()
def compute_exit_cache(
    model: MultiExitModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: LabelledDataset,
    max_length: int,
    batch_size: int = 64,
) -> ExitCache:
    model.eval()
    labels, confidences, entropies, margins = [], [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = tokenize_examples(tokenizer, dataset.examples[start : start + batch_size], max_length)
        logits = model.all_exit_logits(batch.input_ids, batch.attention_mask, batch.token_type_ids)  # (L, B, C)
        batch_labels, batch_confidences, batch_entropies = summarize_exits(logits.transpose(0, 1))  # (B, L) each
        labels.append(batch_labels.numpy())
        confidences.append(batch_confidences.double().numpy())
        entropies.append(batch_entropies.double().numpy())
        margins.append(exit_margins(logits.transpose(0, 1)).double().numpy())
    return ExitCache(
        np.concatenate(labels).astype(np.int64),
        np.concatenate(confidences),
        np.concatenate(entropies),
        np.asarray(dataset.labels(), dtype=np.int64),
        np.concatenate(margins),
    )
