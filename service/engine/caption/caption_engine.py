"""The caption engine: the same step loop with tokens as its steps (DESIGN 6).

Queued images join between any two steps: they are encoded together and start their captions at the next token
step, beside the captions already in flight (`beem.captioning.caption_rows.CaptionRows`, the code `beem evaluate`
decodes with). Each step generates one token for every caption, with per-token early exit; a caption is answered
the moment its end token (or the length limit) comes and leaves, so nobody waits for another caption's last token.
A row whose client left or whose deadline passed leaves between steps. Each generated token is one exit for the
metrics: `beem_exit_layer{task="caption"}` counts tokens, and the decoder layers they ran against full depth.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from beem.bundle.manifest import Manifest
from beem.captioning.caption_bundle import LoadedCaptionBundle, load_caption_bundle
from beem.captioning.caption_rows import CaptionRows
from beem.captioning.captioner import IMAGE_SIZE
from beem.policies.array_policies import RowPolicies
from service.engine.abandoned_rows import CancellationWatch, abandoned_fate
from service.engine.caption.image_row import ImageRow
from service.engine.row_outcome import CaptionAnswer
from service.engine.step_engine import StepEngine

TASK = "caption"
# Images encoded together on CPU. EfficientNet-Lite0's activations for more images than this outgrow the caches:
# measured on the 2-core CPU, 13.6 ms an image in batches of 4 against 24.6 in batches of 8 and 31.6 in batches of
# 16 (16 images: 285 ms in chunks of 4, 505 ms at once). On a GPU the whole group is encoded at once.
CPU_ENCODER_BATCH = 4


class CaptionEngine(StepEngine[LoadedCaptionBundle, ImageRow]):
    task = TASK
    _watch: CancellationWatch  # set at load: when its rows were last searched for cancelled ones
    _rows: CaptionRows | None = None
    _items: np.ndarray = np.empty(0, dtype=object)  # (R,) the CaptionWorkItems, aligned with the rows
    _deadlines: np.ndarray = np.empty(0, dtype=np.float64)  # (R,)

    def _load_bundle(self, bundle_path: Path, manifest: Manifest | None) -> LoadedCaptionBundle:
        bundle = load_caption_bundle(bundle_path, device=str(self.device), dtype=self.dtype, manifest=manifest)
        vocabulary = bundle.vocabulary
        self._rows = CaptionRows(bundle.captioner.decoder, vocabulary.start_id, vocabulary.end_id, bundle.max_length)
        self._watch = CancellationWatch(self._cancellations)
        return bundle

    @torch.inference_mode()
    def _warm_up(self) -> None:
        assert self.bundle is not None
        image = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=self.device, dtype=self.dtype)
        decoder, vocabulary = self.bundle.captioner.decoder, self.bundle.vocabulary
        rows = CaptionRows(decoder, vocabulary.start_id, vocabulary.end_id, 2)
        policies = RowPolicies.of([self.bundle.policies["full"]], [decoder.num_layers], decoder.num_layers,
                                  self.device)  # fmt: skip
        rows.join(self.bundle.captioner.image_features(image), policies)
        while rows.num_rows:
            rows.take(~rows.step())

    @property
    def inflight_rows(self) -> int:
        return 0 if self._rows is None else self._rows.num_rows

    @property
    def inflight_tokens(self) -> int:
        """An image is one unit of the token budget."""
        return self.inflight_rows

    def _layers_run(self, rows: np.ndarray) -> list[int]:
        assert self._rows is not None
        return [sum(caption.exit_layers) for caption in self._rows.captions(rows)]

    def _all_rows(self) -> Sequence[tuple[ImageRow, int]]:
        rows = np.arange(self.inflight_rows)
        return list(zip(self._items[rows], self._layers_run(rows), strict=True))

    def _rows_of_failed_step(self) -> Sequence[tuple[ImageRow, int]]:
        """A token step runs every caption: a failure takes them all (the cache may be half written; the tokens and
        exit layers so far are whole, so each is counted with the decoder layers it ran)."""
        assert self.bundle is not None
        failed = self._all_rows()
        vocabulary = self.bundle.vocabulary
        self._rows = CaptionRows(self.bundle.captioner.decoder, vocabulary.start_id, vocabulary.end_id,
                                 self.bundle.max_length)  # fmt: skip
        self._items, self._deadlines = self._items[:0], self._deadlines[:0]
        return failed

    @torch.inference_mode()
    def _join(self, items: list[ImageRow]) -> None:
        assert self.bundle is not None and self._rows is not None
        images = torch.stack([item.image for item in items]).to(self.device, self.dtype)  # (k, 3, 224, 224)
        chunk = CPU_ENCODER_BATCH if self.device.type == "cpu" else len(items)
        features = torch.cat([self.bundle.captioner.image_features(part) for part in images.split(chunk)])  # (k, P, C)
        num_layers = self.bundle.num_layers
        policies = RowPolicies.of([item.policy for item in items], [num_layers] * len(items), num_layers, self.device)
        self._rows.join(features, policies)
        joined = np.empty(len(items), dtype=object)
        joined[:] = items
        self._items = np.concatenate((self._items, joined))
        self._deadlines = np.concatenate((self._deadlines, [item.deadline for item in items]))

    def _step(self) -> None:
        assert self._rows is not None
        self._leave(self._abandoned(), finished=None)
        if not self._rows.num_rows:
            return
        finished = self._rows.step()
        self._leave(finished, finished=finished)

    def _abandoned(self) -> np.ndarray:
        """(R,) rows whose deadline passed or whose client left: they leave before the next token."""
        return self._watch.abandoned(self._items, self._deadlines, time.monotonic(), self._cancellations)

    def _leave(self, leaving: np.ndarray, finished: np.ndarray | None) -> None:
        """Answer the finished captions, drop the abandoned ones (with the decoder layers they ran)."""
        assert self._rows is not None
        rows = np.flatnonzero(leaving)
        if not len(rows):
            return
        for slot, caption in zip(rows, self._rows.captions(rows), strict=True):
            item = self._items[slot]
            if finished is not None:
                self._answer(item, CaptionAnswer(tuple(caption.tokens), tuple(caption.exit_layers)),
                             caption.exit_layers)  # fmt: skip
            else:
                self._drop([item], abandoned_fate(item), sum(caption.exit_layers))
        keep = ~leaving
        self._rows.take(keep)
        self._items, self._deadlines = self._items[keep], self._deadlines[keep]
