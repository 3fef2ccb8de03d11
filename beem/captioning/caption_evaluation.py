"""Evaluate a captioner's calibrated policies on a split: the JSON `beem evaluate` prints for caption bundles.

The shape is the classification one (`beem.evaluation.evaluate_policies` on the split's teacher-forced token
exit cache: `accuracy` is next-token accuracy, with the paired comparison against full depth) plus, per policy,
what greedy decoding with per-token early exit gives on the split's images: `bleu4`, `cider`, and the decoder
layers actually run. In that entry `mean_exit_layer` and `layer_speedup` are the decoding ones (what serving
costs); the teacher-forced ones move to `teacher_forced`. Wall-clock per caption is measured side by side: every
image is captioned by every policy in turn (rotating order) at batch size 1, so machine noise hits all alike.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from beem.calibration.exit_cache import ExitCache
from beem.captioning.caption_metrics import bleu4, cider_d
from beem.captioning.caption_vocabulary import CaptionVocabulary
from beem.captioning.early_exit_decoding import decode_greedy
from beem.captioning.multi_exit_decoder import MultiExitDecoder
from beem.evaluation import evaluate_policies
from beem.policies.exit_policies import ExitPolicy

EXAMPLES = 3


def evaluate_captions(
    decoder: MultiExitDecoder,
    vocabulary: CaptionVocabulary,
    features: torch.Tensor,  # (N, P, C): the split's image grids
    references: list[tuple[str, ...]],  # every reference caption of each image
    token_cache: ExitCache,  # the split's teacher-forced tokens
    policies: dict[str, ExitPolicy],
    max_new_tokens: int,
    encoder_ms_per_image: float | None = None,
) -> dict[str, Any]:
    result = evaluate_policies(token_cache, policies)
    names = list(policies)
    captions: dict[str, list[str]] = {name: [] for name in names}
    exit_layers: dict[str, list[int]] = {name: [] for name in names}
    seconds = dict.fromkeys(names, 0.0)
    decoder.eval()
    for image in range(features.shape[0]):
        grid = features[image : image + 1]
        for offset in range(len(names)):
            name = names[(image + offset) % len(names)]
            started = time.perf_counter()
            decoded = decode_greedy(decoder, grid, policies[name], vocabulary.start_id, vocabulary.end_id,
                                    max_new_tokens)  # fmt: skip
            seconds[name] += time.perf_counter() - started
            captions[name].append(vocabulary.decode(decoded.tokens))
            exit_layers[name] += decoded.exit_layers
    num_layers = decoder.num_layers
    for name in names:
        entry = result["policies"][name]
        mean_exit = sum(exit_layers[name]) / len(exit_layers[name])
        entry["teacher_forced"] = {"mean_exit_layer": entry["mean_exit_layer"], "layer_speedup": entry["layer_speedup"]}
        entry |= {
            "mean_exit_layer": mean_exit,
            "layer_speedup": num_layers / mean_exit,
            "bleu4": bleu4(captions[name], references),
            "cider": cider_d(captions[name], references),
            "tokens_per_caption": len(exit_layers[name]) / features.shape[0],
            "decoder_ms_per_caption": seconds[name] / features.shape[0] * 1000,
            "examples": captions[name][:EXAMPLES],
        }
    result |= {
        "task": "caption",
        "num_images": int(features.shape[0]),
        "reference_examples": [refs[0] for refs in references[:EXAMPLES]],
        "encoder_ms_per_image": encoder_ms_per_image,
    }
    return result


@torch.inference_mode()
def encoder_milliseconds(encoder_forward: Any, image: torch.Tensor, repeats: int = 10) -> float:
    """Median wall-clock of the encoder on one (1, 3, 224, 224) image: every policy pays it once per caption."""
    encoder_forward(image)  # warm-up
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        encoder_forward(image)
        timings.append(time.perf_counter() - started)
    return sorted(timings)[len(timings) // 2] * 1000
