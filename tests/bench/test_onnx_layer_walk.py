"""bench.onnx_layer_walk on the tiny bundle: the per-layer ONNX Runtime graphs give every exit's logits of the
host path's eager walk, with spinning on and off, and the report has a row per batch size."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from beem.bundle.bundle_reader import load_bundle
from bench.onnx_layer_walk import export_graphs, markdown, onnx_walk, run, session, torch_walk
from tests.engine.engine_driver import TEXTS

pytest.importorskip("onnxruntime", reason="the bench extra (pip install -e '.[bench]') runs these")


@pytest.mark.parametrize("spinning", [False, True])
def test_every_exit_of_the_onnx_walk_is_the_eager_walks(tiny_bundle_dir: Path, tmp_path: Path, spinning: bool) -> None:
    bundle = load_bundle(tiny_bundle_dir)
    layers, heads, _ = export_graphs(bundle, tmp_path)
    assert len(layers) == len(heads) == bundle.num_layers
    sessions = [(session(layer, 1, spinning), session(head, 1, spinning))
                for layer, head in zip(layers, heads, strict=True)]  # fmt: skip
    encoded = bundle.tokenizer(list(TEXTS[:5]), padding=True, return_tensors="pt")  # unequal lengths: padded
    with torch.inference_mode():
        eager, onnx = torch_walk(bundle, encoded), onnx_walk(bundle, sessions, encoded)
    assert len(onnx) == bundle.num_layers
    for ours, theirs in zip(eager, onnx, strict=True):
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_the_bench_writes_a_row_per_batch_size(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    args = argparse.Namespace(bundle=str(tiny_bundle_dir), texts=16, rounds=1, threads=1, spinning=False,
                              work_dir=str(tmp_path))  # fmt: skip
    result = run(args)
    assert set(result["results"]) == {"batch 1", "batch 16"}
    assert all(row["argmax differing"] == 0 for row in result["results"].values())
    table = markdown(result)
    assert "\n| 1 |" in table and "\n| 16 |" in table
