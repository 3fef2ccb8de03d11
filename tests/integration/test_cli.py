"""The `beem` console script end to end on a tiny generated backbone: build through the CLI, then evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BEEM = [sys.executable, "-m", "beem.cli"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BEEM, *args], capture_output=True, text=True, timeout=300, check=False)


def test_build_then_evaluate_prints_the_documented_json(
    tmp_path: Path, tiny_backbone_dir: Path, tiny_data_file: Path
) -> None:
    store = tmp_path / "store"
    built = _run(
        "build", "--preset", "default", "--backbone", str(tiny_backbone_dir), "--data", str(tiny_data_file),
        "--name", "cli-tiny", "--store", str(store), "--run-dir", str(tmp_path / "run"), "--epochs", "1",
        "--max-steps-per-epoch", "3", "--max-length", "32",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    bundle_dir = Path(built.stdout.strip().splitlines()[-1])
    assert bundle_dir == store / "cli-tiny" / "1"

    evaluated = _run("evaluate", "--bundle", str(store / "cli-tiny"), "--split", "test", "--data",
                     str(tiny_data_file), "--json")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["num_layers"] == 3
    assert 0.0 <= result["final_layer_accuracy"] <= 1.0
    assert result["oracle_layer_speedup"] >= 1.0
    assert {"beem-a", "beem-c", "max-prob", "entropy", "patience", "full"} <= set(result["policies"])
    for name, entry in result["policies"].items():
        assert set(entry) >= {"accuracy", "mean_exit_layer", "layer_speedup", "params"}, name
        assert 1.0 <= entry["mean_exit_layer"] <= 3.0
        assert abs(entry["layer_speedup"] - 3 / entry["mean_exit_layer"]) < 1e-9
    assert result["policies"]["full"]["mean_exit_layer"] == 3.0


def test_evaluate_refuses_a_missing_bundle_with_a_message(tmp_path: Path) -> None:
    result = _run("evaluate", "--bundle", str(tmp_path / "nothing"), "--json")
    assert result.returncode == 2
    assert "no such bundle directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_refuses_a_data_file_other_than_the_bundles(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "fine", "label": "positive"}\n{"text": "bad", "label": "negative"}\n')
    result = _run("evaluate", "--bundle", str(tiny_bundle_dir), "--data", str(other), "--split", "test")
    assert result.returncode == 2
    assert "not the file this bundle was built on" in result.stderr
