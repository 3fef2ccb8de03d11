"""The in-process half of bench/runtime_peers: every system as a function from texts to label indices, its
accuracy on the test split, and its batch-1 latency and batch-16 throughput measured in alternating rounds.

A system is a peer (`peer_models.Peer`: tokenizer, full-depth forward) or our engine under one policy (the server's
own text encoder and classification engine, run in this thread by bench/engine_in_thread.py), so both sides pay
their own tokenization.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from beem.bundle.bundle_reader import LoadedBundle
from beem.policies.exit_policies import ExitPolicy
from bench.engine_in_thread import classify_ids
from bench.runtime_peers.peer_models import Peer
from service.engine.classify.classification_engine import ClassificationEngine
from service.text_encoder import TextEncoder

Classify = Callable[[Sequence[str]], list[int]]  # texts -> label indices
ACCURACY_BATCH = 32


@dataclass(frozen=True)
class System:
    name: str
    classify: Classify
    exit_layers: Callable[[], list[int]] | None = None  # ours: the exit layer of each text of the last call


def peer_system(peer: Peer) -> System:
    return System(peer.name, lambda texts: peer.logits(texts).argmax(dim=-1).tolist())


def engine_system(name: str, engine: ClassificationEngine, bundle: LoadedBundle, policy: ExitPolicy) -> System:
    encoder = TextEncoder(bundle.tokenizer, bundle.max_length)
    last: list[int] = []

    def classify(texts: Sequence[str]) -> list[int]:
        rows = [ids for ids, _ in encoder.encode(texts, None, truncate=True)]
        answers = classify_ids(engine, rows, policy)
        last[:] = [a.exit_layer for a in answers]
        return [a.label for a in answers]

    return System(name, classify, lambda: list(last))


def accuracy(system: System, texts: Sequence[str], labels: Sequence[int]) -> dict[str, float]:
    """Share of `texts` whose label is right (and, for ours, the mean exit layer), in batches of 32."""
    predicted: list[int] = []
    layers: list[int] = []
    for start in range(0, len(texts), ACCURACY_BATCH):
        predicted += system.classify(texts[start : start + ACCURACY_BATCH])
        if system.exit_layers is not None:
            layers += system.exit_layers()
    result = {"accuracy": sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(texts)}
    if layers:
        result["mean_exit_layer"] = sum(layers) / len(layers)
    return result


def time_in_process(
    systems: Sequence[System], texts: Sequence[str], rounds: int, batch1_texts: int, batch16_groups: int
) -> dict[str, dict[str, float]]:
    """Per system, the median batch-1 latency (ms, one text per call, `batch1_texts` texts a round) and the
    throughput at batch 16 (texts/s over `batch16_groups` calls of 16 a round). Each round gives every system the
    same texts, the order of systems rotated round by round, so drift of the machine hits them alike."""
    latencies: dict[str, list[float]] = {s.name: [] for s in systems}
    batched: dict[str, list[float]] = {s.name: [] for s in systems}  # seconds per call of 16
    for round_index in range(rounds):
        start = round_index * (batch1_texts + 16 * batch16_groups)
        singles = [texts[(start + i) % len(texts)] for i in range(batch1_texts)]
        groups = [[texts[(start + batch1_texts + 16 * g + i) % len(texts)] for i in range(16)]
                  for g in range(batch16_groups)]  # fmt: skip
        shift = round_index % len(systems)
        for system in [*systems[shift:], *systems[:shift]]:
            for text in singles:
                started = time.perf_counter()
                system.classify([text])
                latencies[system.name].append(time.perf_counter() - started)
            for group in groups:
                started = time.perf_counter()
                system.classify(group)
                batched[system.name].append(time.perf_counter() - started)
    return {
        name: {
            "batch1_p50_ms": statistics.median(latencies[name]) * 1000,
            "batch1_p90_ms": statistics.quantiles(latencies[name], n=10)[-1] * 1000,
            "batch16_texts_per_s": 16 * len(batched[name]) / sum(batched[name]),
        }
        for name in latencies
    }
