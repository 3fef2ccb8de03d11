"""What a GPU run must show: the CUDA path (fp16) answers like the CPU path (fp32), and what early exit saves.

    python -m bench.gpu.cuda_checks classification [--bundle DIR] [--out DIR]
    python -m bench.gpu.cuda_checks caption --images DIR [--bundle DIR] [--out DIR]

classification: the default bundle's test split through the engine's step loop (in this thread) on CPU fp32 and
CUDA fp16, BEEM-A and full: label and exit-layer agreement, accuracy on each; then CUDA milliseconds per request
at batch 1 and per batch of 32, full and BEEM-A interleaved. caption: the images through `decode_batch` on both
devices: caption and token-exit agreement; CUDA milliseconds per caption at batch 1 and per batch of 32. Writes
cuda_checks_<task>.json under --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from beem.bundle.manifest import resolve_bundle_dir
from beem.captioning.caption_bundle import LoadedCaptionBundle, load_caption_bundle
from beem.captioning.captioner import image_tensor
from beem.captioning.early_exit_decoding import decode_batch
from beem.data.examples import read_dataset
from beem.data.rotten_tomatoes import REPO_DATA_FILE
from beem.data.splits import split_dataset
from bench.engine_in_thread import classify_ids, engine_in_thread
from service.engine.classify.classification_engine import ClassificationEngine
from service.engine.row_outcome import ClassAnswer
from service.settings import DEFAULT_BUNDLE

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICIES = ("full", "beem-a")


def _synchronise() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        _synchronise()
        started = time.perf_counter()
        run()
        _synchronise()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke run: both sides on the CPU)"


def classification(bundle_dir: Path, gpu: str, limit: int) -> dict[str, Any]:
    engines = {}
    for device, dtype in (("cpu", "float32"), ("cuda", "auto" if gpu == "cuda" else "float32")):
        engines[device] = engine_in_thread(bundle_dir, gpu if device == "cuda" else "cpu", dtype,
                                           max_batch_size=64, max_batch_tokens=1 << 16)  # fmt: skip
    bundle = engines["cpu"].bundle
    assert bundle is not None
    test = split_dataset(read_dataset(REPO_DATA_FILE)).test.examples[:limit]
    encoded = [bundle.tokenizer(e.text, truncation=True, max_length=bundle.max_length) for e in test]

    def run(engine: ClassificationEngine, rows: list[int], policy: str) -> list[ClassAnswer]:
        assert engine.bundle is not None
        return classify_ids(engine, [encoded[row]["input_ids"] for row in rows], engine.bundle.policies[policy])

    result: dict[str, Any] = {"device": _device_name(gpu), "samples": len(test)}
    for policy in POLICIES:
        outcomes = {}
        for device, engine in engines.items():
            batches = [list(range(start, min(start + 32, len(test)))) for start in range(0, len(test), 32)]
            outcomes[device] = [outcome for batch in batches for outcome in run(engine, batch, policy)]
        cpu, cuda = outcomes["cpu"], outcomes["cuda"]
        labels = [e.label for e in test]
        result[policy] = {
            "label_agreement": sum(a.label == b.label for a, b in zip(cpu, cuda, strict=True)) / len(test),
            "exit_layer_agreement": sum(a.exit_layer == b.exit_layer for a, b in zip(cpu, cuda, strict=True))
            / len(test),
            "accuracy_cpu": sum(o.label == y for o, y in zip(cpu, labels, strict=True)) / len(test),
            "accuracy_cuda": sum(o.label == y for o, y in zip(cuda, labels, strict=True)) / len(test),
            "mean_exit_layer_cuda": sum(o.exit_layer for o in cuda) / len(test),
        }
    fast = engines["cuda"]
    singles = [[i] for i in range(min(200, len(test)))]
    result["batch1_ms"] = _interleaved_ms(singles, lambda rows, policy: run(fast, rows, policy))
    batches = [list(range(start, start + 32)) for start in range(0, min(640, len(test)) - 31, 32)]
    result["batch32_ms"] = _interleaved_ms(batches, lambda rows, policy: run(fast, rows, policy))
    return result


def _interleaved_ms(batches: list[Any], run: Callable[[Any, str], object]) -> dict[str, float]:
    """Median milliseconds per batch for each policy, the policies taking turns batch by batch (after a warm-up),
    and full's time over BEEM-A's."""
    for policy in POLICIES:
        _median_ms(lambda: run(batches[0], policy), 3)  # noqa: B023 (called at once)
    timings: dict[str, list[float]] = {policy: [] for policy in POLICIES}
    for batch in batches:
        for policy in POLICIES:
            timings[policy].append(_median_ms(lambda: run(batch, policy), 1))  # noqa: B023 (called at once)
    medians = {policy: statistics.median(values) for policy, values in timings.items()}
    return {**medians, "speedup_beem_a": medians["full"] / medians["beem-a"]}


def caption(bundle_dir: Path, images_dir: Path, limit: int, gpu: str) -> dict[str, Any]:
    gpu_dtype = torch.float16 if gpu == "cuda" else torch.float32
    bundles: dict[str, LoadedCaptionBundle] = {
        "cpu": load_caption_bundle(bundle_dir, "cpu", torch.float32),
        "cuda": load_caption_bundle(bundle_dir, gpu, gpu_dtype),
    }
    paths = sorted(images_dir.glob("*.png"))[:limit]
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image_tensor(image))
    pixels = torch.stack(images)  # (N, 3, 224, 224)
    result: dict[str, Any] = {"device": _device_name(gpu), "images": len(paths)}

    def decode(bundle: LoadedCaptionBundle, rows: torch.Tensor, policy: str) -> list[Any]:
        device, dtype = (gpu, gpu_dtype) if bundle is bundles["cuda"] else ("cpu", torch.float32)
        with torch.inference_mode():
            features = bundle.captioner.image_features(rows.to(device, dtype))
            vocabulary = bundle.vocabulary
            return decode_batch(bundle.captioner.decoder, features, [bundle.policies[policy]] * len(rows),
                                vocabulary.start_id, vocabulary.end_id, bundle.max_length)  # fmt: skip

    for policy in POLICIES:
        decoded = {device: [c for s in range(0, len(paths), 32) for c in decode(b, pixels[s : s + 32], policy)]
                   for device, b in bundles.items()}  # fmt: skip
        pairs = list(zip(decoded["cpu"], decoded["cuda"], strict=True))
        result[policy] = {
            "caption_agreement": sum(a.tokens == b.tokens for a, b in pairs) / len(pairs),
            "token_exit_agreement": sum(a.exit_layers == b.exit_layers for a, b in pairs) / len(pairs),
            "mean_exit_layer_cuda": statistics.mean(x for c in decoded["cuda"] for x in c.exit_layers),
        }
    fast = bundles["cuda"]
    for name, size in (("batch1_ms", 1), ("batch32_ms", 32)):
        batches = [pixels[start : start + size] for start in range(0, len(paths) - size + 1, size)][:60]
        result[name] = _interleaved_ms(batches, lambda rows, policy: decode(fast, rows, policy))
    return result


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("task", choices=["classification", "caption"])
    arguments.add_argument("--bundle")
    arguments.add_argument("--images", help="caption: a folder of PNG images")
    arguments.add_argument("--limit", type=int, default=2000, help="at most this many test texts or images")
    arguments.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    arguments.add_argument("--gpu", default="cuda", help="cpu: a smoke run of this script on a machine without one")
    args = arguments.parse_args()
    if args.task == "classification":
        result = classification(resolve_bundle_dir(Path(args.bundle or DEFAULT_BUNDLE)), args.gpu, args.limit)
    else:
        bundle = Path(args.bundle or REPO_ROOT / "model_store" / "lite0-fashion-scenes-captioner")
        result = caption(resolve_bundle_dir(bundle), Path(args.images), args.limit, args.gpu)
    text = json.dumps(result, indent=1)
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"cuda_checks_{args.task}.json").write_text(text)


if __name__ == "__main__":
    main()
