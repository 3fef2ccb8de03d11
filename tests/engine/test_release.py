"""An unloaded version's weights are freed: after `close` and `release`, nothing the engine made at load (a layer
path, the captions in flight, cached policy rows) still references the model."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from beem.bundle.manifest import read_manifest, resolve_bundle_dir
from service.app import build_engine
from service.settings import ServerSettings
from tests.engine.engine_driver import TEXTS, loaded_engine, submit


@pytest.mark.parametrize("engine_path", ["host", "device"])
def test_a_released_classification_engine_holds_no_weights(tiny_bundle_dir: Path, engine_path: str) -> None:
    engine = loaded_engine(tiny_bundle_dir, engine_path=engine_path)
    assert engine.bundle is not None
    submitted = submit(engine, TEXTS[:2], engine.bundle.policies["beem-a"])
    engine.run_until_idle()
    assert len(submitted.answers()) == 2
    model = weakref.ref(engine.bundle.model)
    engine.close()
    engine.release()
    gc.collect()
    assert model() is None, "something made at load still references the model"


def test_a_released_caption_engine_holds_no_weights(tiny_caption_bundle_dir: Path) -> None:
    manifest = read_manifest(resolve_bundle_dir(tiny_caption_bundle_dir))
    engine = build_engine(ServerSettings(bundle=tiny_caption_bundle_dir), "caption", manifest.num_layers)
    engine.load(tiny_caption_bundle_dir, None, start_worker=False)
    assert engine.bundle is not None
    captioner = weakref.ref(engine.bundle.captioner)
    engine.close()
    engine.release()
    gc.collect()
    assert captioner() is None, "something made at load still references the captioner"
