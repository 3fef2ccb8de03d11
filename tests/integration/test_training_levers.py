"""The retraining levers (issue 12) through the real CLI, trainer and bundle: each flag reaches the model it builds,
the bundle records it and serves it, and earlier checkpoints still resume."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from beem.bundle.bundle_reader import load_bundle
from beem.bundle.manifest import read_manifest
from beem.calibration.exit_cache import ExitCache, compute_exit_cache
from beem.data.examples import read_dataset
from beem.data.splits import split_dataset
from beem.model.exit_heads import ExitHeads, ExitHeadSpec
from beem.model.multi_exit_model import MultiExitModel
from beem.training.checkpoint import STATE_FILE
from beem.training.trainer import TrainingConfig, _optimizer, train
from tests.engine.engine_driver import TEXTS, loaded_engine, submit

CONFIG = TrainingConfig(epochs=2, batch_size=8, learning_rate=1e-3, max_length=24, max_steps_per_epoch=2)


@pytest.fixture(scope="module")
def lever_bundle_dir(tmp_path_factory: pytest.TempPathFactory, tiny_backbone_dir: Path, tiny_data_file: Path) -> Path:
    """A tiny bundle with every lever flag set, built by `beem build`."""
    root = tmp_path_factory.mktemp("lever_build")
    built = subprocess.run(
        [sys.executable, "-m", "beem.cli", "build", "--preset", "default", "--backbone", str(tiny_backbone_dir),
         "--data", str(tiny_data_file), "--name", "lever-tiny", "--store", str(root / "store"), "--run-dir",
         str(root / "run"), "--epochs", "1", "--max-steps-per-epoch", "3", "--max-length", "32",
         "--head-design", "linear", "--head-learning-rate-scale", "5", "--distillation-weight", "0.5",
         "--distillation-temperature", "4", "--calibration-share", "0.35"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    return Path(built.stdout.strip().splitlines()[-1])


def test_the_manifest_records_every_lever(lever_bundle_dir: Path, tiny_data_file: Path) -> None:
    manifest = read_manifest(lever_bundle_dir)
    assert manifest.raw["exit_heads"]["design"] == "linear"
    training = manifest.training
    assert (training["head_learning_rate_scale"], training["distillation_weight"]) == (5.0, 0.5)
    assert training["distillation_temperature"] == 4.0
    assert manifest.data["calibration_share"] == 0.35
    plain = split_dataset(read_dataset(tiny_data_file))
    sizes = manifest.data["split_sizes"]
    assert sizes["test"] == len(plain.test)  # the test split is the one every other build reports
    assert sizes["calibration"] == pytest.approx(0.35 * (len(plain.train) + len(plain.calibration)), abs=2)


def test_a_linear_head_bundle_reloads_to_its_calibration_exits(lever_bundle_dir: Path, tiny_data_file: Path) -> None:
    bundle = load_bundle(lever_bundle_dir)
    assert len(bundle.model.heads.poolers) == 0
    assert not any("poolers" in name for name in bundle.model.state_dict())
    splits = split_dataset(read_dataset(tiny_data_file), calibration_share=0.35)
    recomputed = compute_exit_cache(bundle.model, bundle.tokenizer, splits.calibration, bundle.max_length)
    stored = ExitCache.load(lever_bundle_dir / "calibration_exits.safetensors")
    np.testing.assert_array_equal(recomputed.exit_labels, stored.exit_labels)
    np.testing.assert_array_equal(recomputed.confidences, stored.confidences)


def _served(bundle_dir: Path, engine_path: str, policy_name: str) -> list[tuple[int, int]]:
    engine = loaded_engine(bundle_dir, engine_path=engine_path, skip_unprofitable_exits=False)
    assert engine.engine_path == engine_path
    assert engine.bundle is not None
    submitted = submit(engine, TEXTS, engine.bundle.policies[policy_name])
    engine.run_until_idle()
    return submitted.labels_and_layers()


def test_a_linear_head_bundle_serves_on_both_engine_paths(lever_bundle_dir: Path) -> None:
    """Full depth answers what the bundle's model computes for each text alone; exits agree across the paths."""
    bundle = load_bundle(lever_bundle_dir)
    expected = []
    for text in TEXTS:
        batch = bundle.tokenizer([text], return_tensors="pt", truncation=True, max_length=bundle.max_length)
        with torch.inference_mode():
            logits = bundle.model.all_exit_logits(batch["input_ids"], batch["attention_mask"])  # (L, 1, C)
        expected.append((int(logits[-1, 0].argmax()), 3))
    for engine_path in ("host", "device"):
        assert _served(lever_bundle_dir, engine_path, "full") == expected, engine_path
    assert _served(lever_bundle_dir, "device", "beem-a") == _served(lever_bundle_dir, "host", "beem-a")


def test_an_old_manifest_without_a_head_design_means_pooler_heads() -> None:
    spec = ExitHeadSpec(**{"num_layers": 2, "hidden_size": 8, "num_labels": 3, "pooling": "mean",
                           "shared_pooler": False, "dropout": 0.1})  # fmt: skip
    assert spec.design == "pooler" and len(ExitHeads(spec).poolers) == 2
    with pytest.raises(ValueError, match="design"):
        ExitHeadSpec(num_layers=2, hidden_size=8, num_labels=3, design="deep")


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_head_learning_rate_scale_sets_the_heads_groups_and_keeps_parameter_order(
    tiny_backbone_dir: Path, scale: float
) -> None:
    model = MultiExitModel.from_pretrained_backbone(str(tiny_backbone_dir), 2, "mean", shared_pooler=False)
    optimizer = _optimizer(model, replace(CONFIG, head_learning_rate_scale=scale))
    head_ids = {id(p) for p in model.heads.parameters()}
    for group in optimizer.param_groups:
        in_heads = {id(p) in head_ids for p in group["params"]}
        assert len(in_heads) == 1  # a group is all heads or all backbone
        assert group["lr"] == pytest.approx(CONFIG.learning_rate * (scale if in_heads.pop() else 1.0))
    # Optimizer-state indices as before heads had their own groups: decayed parameters, then undecayed, each in
    # the model's order, so a checkpoint written before still maps every state to its parameter.
    named = list(model.named_parameters())
    undecayed = [p.ndim < 2 or "LayerNorm" in n for n, p in named]
    expected = [p for (_, p), u in zip(named, undecayed, strict=True) if not u]
    expected += [p for (_, p), u in zip(named, undecayed, strict=True) if u]
    assert [id(p) for g in optimizer.param_groups for p in g["params"]] == [id(p) for p in expected]


def test_a_checkpoint_from_before_a_setting_existed_resumes_at_its_default(
    tmp_path: Path, tiny_backbone_dir: Path, tiny_data_file: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_backbone_dir))
    data = read_dataset(tiny_data_file)
    torch.manual_seed(0)
    model = MultiExitModel.from_pretrained_backbone(str(tiny_backbone_dir), 2, "mean", shared_pooler=False)
    train(model, tokenizer, data, CONFIG, tmp_path, stop_after_epoch=1)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    del state["config"]["head_learning_rate_scale"]  # as a checkpoint written before the setting was added
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    assert train(model, tokenizer, data, CONFIG, tmp_path).epochs_done == 2
    with pytest.raises(ValueError, match="different training config"):
        train(model, tokenizer, data, replace(CONFIG, head_learning_rate_scale=5.0), tmp_path)
