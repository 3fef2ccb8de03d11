"""`beem build --task caption` and `beem evaluate` on caption bundles, through the real command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beem.captioning.caption_data import CaptionDataSource, load_caption_items
from beem.cli import main
from beem.data.examples import DataFormatError


def test_evaluate_prints_the_classification_shape_with_caption_metrics(
    tiny_caption_bundle_dir: Path, fake_fashion_mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["evaluate", "--bundle", str(tiny_caption_bundle_dir), "--split", "test", "--json",
                 "--fashion-mnist-dir", str(fake_fashion_mnist_dir), "--work-dir", str(tmp_path)])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    stored = json.loads((tiny_caption_bundle_dir / "test_evaluation.json").read_text())
    assert result["task"] == "caption" and result["num_layers"] == 3
    assert set(result["policies"]) == set(stored["policies"])
    for name, entry in result["policies"].items():
        # The same images and weights as the build's own test evaluation: the same captions and exits.
        assert entry["bleu4"] == pytest.approx(stored["policies"][name]["bleu4"])
        assert entry["mean_exit_layer"] == pytest.approx(stored["policies"][name]["mean_exit_layer"])
        assert {"accuracy", "paired_vs_full", "teacher_forced", "cider", "decoder_ms_per_caption"} <= set(entry)


def test_build_task_caption_from_the_command_line(fake_fashion_mnist_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code = main(["build", "--task", "caption", "--encoder", "tiny-cnn", "--scenes", "20", "--epochs", "1",
                 "--exit-epochs", "1", "--fashion-mnist-dir", str(fake_fashion_mnist_dir), "--name", "cli-captioner",
                 "--store", str(tmp_path / "store"), "--run-dir", str(tmp_path / "run")])  # fmt: skip
    assert code == 0
    bundle_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert bundle_dir == tmp_path / "store" / "cli-captioner" / "1"
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["task"] == "caption" and manifest["num_layers"] == 6  # the default preset's decoder
    assert manifest["training"]["backbone_epochs"] == 1


def test_missing_fashion_mnist_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DataFormatError, match="apt-get install dataset-fashion-mnist"):
        load_caption_items(CaptionDataSource(num_scenes=5, fashion_mnist_dir=str(tmp_path / "none")), tmp_path)
    code = main(["build", "--task", "caption", "--encoder", "tiny-cnn", "--scenes", "5", "--fashion-mnist-dir",
                 str(tmp_path / "none"), "--store", str(tmp_path), "--run-dir", str(tmp_path / "run")])  # fmt: skip
    assert code == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err


def test_coco_bundles_need_their_data_again(tiny_caption_bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = json.loads((tiny_caption_bundle_dir / "manifest.json").read_text())
    assert manifest["data"]["kind"] == "fashion-mnist-scenes"
    code = main(["evaluate", "--bundle", str(tiny_caption_bundle_dir), "--split", "all"])
    assert code == 2
    assert "one split" in capsys.readouterr().err
