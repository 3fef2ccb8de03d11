"""The caption server's image encoder as stored against the form it serves (`beem/captioning/inference_encoder.py`:
BatchNorms folded, channels-last), side by side in one process on the caption bundle's test images.

    python -m bench.caption_encoder [--bundle DIR] [--images 64] [--rounds 6] [--chunks 1,4,8] [--out bench/results]

1. Numbers: the largest feature difference, and whether greedy captions (full depth and BEEM-A, per-token exits)
   come out token for token and exit for exit the same from both forms' features.
2. Time: ms an image, encoding the images in chunks of each size (the engine encodes joining images in chunks of
   `CPU_ENCODER_BATCH`), the two forms alternating round by round in rotating order, medians over rounds.
Writes `<out>/caption_encoder_cpu.json` and `.md`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from beem.bundle.manifest import resolve_bundle_dir
from beem.captioning.caption_bundle import load_caption_bundle
from beem.captioning.early_exit_decoding import decode_batch
from beem.captioning.inference_encoder import inference_encoder
from bench.caption_serving import DEFAULT_CAPTION_BUNDLE, REPO_ROOT, copy_test_split_images
from bench.result_files import write_results
from service.image_input import image_from_bytes

FORMS = ("stored", "served")
MAX_PIXELS = 4096 * 4096


@torch.inference_mode()
def run(bundle_dir: Path, work_dir: Path, num_images: int, rounds: int, chunks: list[int]) -> dict[str, Any]:
    bundle_dir = resolve_bundle_dir(bundle_dir)
    bundle = load_caption_bundle(bundle_dir)
    stored = bundle.captioner.encoder
    served = inference_encoder(copy.deepcopy(stored), torch.device("cpu"))
    encoders: dict[str, nn.Module] = {"stored": stored, "served": served}
    folder = copy_test_split_images(bundle_dir, work_dir, num_images)
    images = torch.stack([image_from_bytes(path.read_bytes(), MAX_PIXELS) for path in sorted(folder.iterdir())])

    features = {name: _grid(encoder, images, 4) for name, encoder in encoders.items()}  # (N, P, C) each
    decoder, vocabulary = bundle.captioner.decoder, bundle.vocabulary
    same: dict[str, bool] = {}
    for policy in ("full", "beem-a"):
        decoded = {name: decode_batch(decoder, grid, [bundle.policies[policy]] * len(images), vocabulary.start_id,
                                      vocabulary.end_id, bundle.max_length)
                   for name, grid in features.items()}  # fmt: skip
        same[policy] = all(a is not None and b is not None and a.tokens == b.tokens and a.exit_layers == b.exit_layers
                           for a, b in zip(decoded["stored"], decoded["served"], strict=True))  # fmt: skip

    per_image: dict[str, dict[int, list[float]]] = {name: {chunk: [] for chunk in chunks} for name in FORMS}
    for round_index in range(rounds):
        order = FORMS if round_index % 2 == 0 else FORMS[::-1]
        for chunk in chunks:
            for name in order:
                started = time.perf_counter()
                _grid(encoders[name], images, chunk)
                per_image[name][chunk].append((time.perf_counter() - started) / len(images) * 1000)
    timing = {
        str(chunk): {
            **{f"{name}_ms_per_image": statistics.median(per_image[name][chunk]) for name in FORMS},
            "stored_over_served": statistics.median(
                s / v for s, v in zip(per_image["stored"][chunk], per_image["served"][chunk], strict=True)
            ),
        }
        for chunk in chunks
    }
    return {
        "setup": {
            "bundle": bundle.manifest.model_id,
            "images": len(images),
            "rounds": rounds,
            "torch_threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"),
        },
        "max_feature_difference": float((features["stored"] - features["served"]).abs().max()),
        "feature_range": float(features["stored"].abs().max()),
        "same_captions": same,
        "by_chunk": timing,
    }


def _grid(encoder: nn.Module, images: torch.Tensor, chunk: int) -> torch.Tensor:
    """(N, 3, 224, 224) -> (N, P, C), encoded `chunk` images at a time, as the captioner's `image_features`."""
    grids = [encoder.forward_features(part) for part in images.split(chunk)]  # (k, C, 7, 7) each
    return torch.cat(grids).flatten(2).transpose(1, 2)


def markdown(results: dict[str, Any]) -> str:
    setup = results["setup"]
    lines = [
        f"`python -m bench.caption_encoder` on {setup['bundle']}, {setup['images']} test images, {setup['rounds']} "
        f"alternating rounds, {setup['torch_threads']} torch threads, {setup['date']}. Medians.",
        "",
        "| chunk | stored ms/image | served ms/image | stored / served |",
        "|---|---|---|---|",
    ]
    for chunk, row in results["by_chunk"].items():
        lines.append(f"| {chunk} | {row['stored_ms_per_image']:.2f} | {row['served_ms_per_image']:.2f} | "
                     f"{row['stored_over_served']:.2f}x |")  # fmt: skip
    same = ", ".join(f"{policy}: {'same' if ok else 'DIFFERENT'}" for policy, ok in results["same_captions"].items())
    lines += ["", f"- Largest feature difference {results['max_feature_difference']:.2e} (features up to "
                  f"{results['feature_range']:.1f}); greedy captions and their exit layers: {same}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--bundle", default=str(DEFAULT_CAPTION_BUNDLE))
    arguments.add_argument("--work-dir", default=str(REPO_ROOT / "runs" / "caption-evaluation"))
    arguments.add_argument("--images", type=int, default=64)
    arguments.add_argument("--rounds", type=int, default=6)
    arguments.add_argument("--chunks", default="1,4,8")
    arguments.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    args = arguments.parse_args()
    results = run(Path(args.bundle), Path(args.work_dir), args.images, args.rounds,
                  [int(c) for c in args.chunks.split(",")])  # fmt: skip
    write_results(Path(args.out), "caption_encoder_cpu", results, markdown(results))


if __name__ == "__main__":
    main()
