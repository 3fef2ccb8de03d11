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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from beem.bundle.manifest import Manifest
from beem.captioning.caption_bundle import LoadedCaptionBundle, load_caption_bundle
from beem.captioning.caption_rows import CaptionRows
from beem.captioning.captioner import IMAGE_SIZE
from beem.captioning.inference_encoder import inference_encoder
from beem.policies.array_policies import RowPolicies
from service.engine.abandoned_rows import CancellationWatch, abandoned_fate
from service.engine.caption.image_row import ImageRow
from service.engine.queued_row import object_array
from service.engine.row_outcome import CaptionAnswer
from service.engine.step_engine import StepEngine

# Images encoded together on CPU. EfficientNet-Lite0's activations for more images than this outgrow the caches:
# measured on the 2-core CPU, 13.6 ms an image in batches of 4 against 24.6 in batches of 8 and 31.6 in batches of
# 16 (16 images: 285 ms in chunks of 4, 505 ms at once). On a GPU the whole group is encoded at once.
CPU_ENCODER_BATCH = 4


@dataclass(eq=False)
class CaptionsInFlight:
    """The loaded captioner and the captions it is generating, aligned row for row: whole from the moment the
    bundle has loaded."""

    bundle: LoadedCaptionBundle
    rows: CaptionRows  # the decoding state of every caption in flight (R rows)
    watch: CancellationWatch  # when its rows were last searched for cancelled ones
    items: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))  # (R,) the ImageRows
    deadlines: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))  # (R,)

    @classmethod
    def empty(cls, bundle: LoadedCaptionBundle, cancellations: int) -> CaptionsInFlight:
        vocabulary = bundle.vocabulary
        rows = CaptionRows(bundle.captioner.decoder, vocabulary.start_id, vocabulary.end_id, bundle.max_length)
        return cls(bundle, rows, CancellationWatch(cancellations))


class CaptionEngine(StepEngine[LoadedCaptionBundle, ImageRow]):
    _flight: CaptionsInFlight | None = None  # made when the bundle has loaded

    def _load_bundle(self, bundle_path: Path, manifest: Manifest | None) -> LoadedCaptionBundle:
        bundle = load_caption_bundle(bundle_path, device=str(self.device), dtype=self.dtype, manifest=manifest)
        # BatchNorms folded, channels-last on the CPU (`inference_encoder.py`): the encoder is most of a caption's
        # cost under load.
        bundle.captioner.encoder = inference_encoder(bundle.captioner.encoder, self.device)
        self._flight = CaptionsInFlight.empty(bundle, self._cancellations)
        return bundle

    def _release_loaded(self) -> None:
        self._flight = None

    def _in_flight(self) -> CaptionsInFlight:
        if self._flight is None:
            raise RuntimeError("the caption engine has no bundle loaded")
        return self._flight

    @torch.inference_mode()
    def _warm_up(self) -> None:
        bundle = self._in_flight().bundle
        image = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=self.device, dtype=self.dtype)
        decoder, vocabulary = bundle.captioner.decoder, bundle.vocabulary
        rows = CaptionRows(decoder, vocabulary.start_id, vocabulary.end_id, 2)
        policies = RowPolicies.of([bundle.policies["full"]], [decoder.num_layers], decoder.num_layers, self.device)
        rows.join(bundle.captioner.image_features(image), policies)
        while rows.num_rows:
            rows.take(~rows.step())

    @property
    def inflight_rows(self) -> int:
        return 0 if self._flight is None else self._flight.rows.num_rows

    @property
    def inflight_tokens(self) -> int:
        """An image is one unit of the token budget."""
        return self.inflight_rows

    def _all_rows(self) -> Sequence[tuple[ImageRow, int]]:
        if self._flight is None:
            return []
        flight = self._flight
        rows = np.arange(flight.rows.num_rows)
        layers_run = [sum(caption.exit_layers) for caption in flight.rows.captions(rows)]
        return list(zip(flight.items[rows], layers_run, strict=True))

    def _rows_of_failed_step(self) -> Sequence[tuple[ImageRow, int]]:
        """A token step runs every caption: a failure takes them all (the cache may be half written; the tokens and
        exit layers so far are whole, so each is counted with the decoder layers it ran)."""
        failed = self._all_rows()
        self._flight = CaptionsInFlight.empty(self._in_flight().bundle, self._cancellations)
        return failed

    @torch.inference_mode()
    def _join(self, items: list[ImageRow]) -> None:
        flight = self._in_flight()
        captioner, num_layers = flight.bundle.captioner, flight.bundle.num_layers
        images = torch.stack([item.image for item in items]).to(self.device, self.dtype)  # (k, 3, 224, 224)
        chunk = CPU_ENCODER_BATCH if self.device.type == "cpu" else len(items)
        features = torch.cat([captioner.image_features(part) for part in images.split(chunk)])  # (k, P, C)
        policies = RowPolicies.of([item.policy for item in items], [num_layers] * len(items), num_layers, self.device)
        flight.rows.join(features, policies)
        flight.items = np.concatenate((flight.items, object_array(items)))
        flight.deadlines = np.concatenate((flight.deadlines, [item.deadline for item in items]))

    def _step(self) -> None:
        flight = self._in_flight()
        abandoned = flight.watch.abandoned(flight.items, flight.deadlines, time.monotonic(), self._cancellations)
        self._leave(flight, abandoned, finished=None)  # (R,) rows whose deadline passed or whose client left
        if not flight.rows.num_rows:
            return
        finished = flight.rows.step()
        self._leave(flight, finished, finished=finished)

    def _leave(self, flight: CaptionsInFlight, leaving: np.ndarray, finished: np.ndarray | None) -> None:
        """Answer the finished captions, drop the abandoned ones (with the decoder layers they ran)."""
        rows = np.flatnonzero(leaving)
        if not len(rows):
            return
        for slot, caption in zip(rows, flight.rows.captions(rows), strict=True):
            item = flight.items[slot]
            if finished is not None:
                self._answer(item, CaptionAnswer(tuple(caption.tokens), tuple(caption.exit_layers)))
            else:
                self._drop([item], abandoned_fate(item), sum(caption.exit_layers))
        keep = ~leaving
        flight.rows.take(keep)
        flight.items, flight.deadlines = flight.items[keep], flight.deadlines[keep]
