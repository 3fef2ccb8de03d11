"""The caption engine: a batch of images is encoded together, then decoded token by token with every row's own
per-token early exit (`beem.captioning.early_exit_decoding.decode_batch`, the code `beem evaluate` measures).

A caption is answered the moment its end token (or the length limit) comes, and leaves the batch; a row whose
client left or whose deadline passed is dropped between tokens. Each generated token is one exit for the metrics:
`beem_exit_layer{task="caption"}` counts tokens, and the decoder layers they ran against full depth.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from beem.captioning.caption_bundle import LoadedCaptionBundle, load_caption_bundle
from beem.captioning.captioner import IMAGE_SIZE
from beem.captioning.early_exit_decoding import DecodedCaption, decode_batch
from service.engine.model_worker import ModelWorker
from service.engine.work_item import CaptionOutcome, CaptionWorkItem

TASK = "caption"


class CaptionEngine(ModelWorker[LoadedCaptionBundle, CaptionWorkItem]):
    task = TASK

    def _load_bundle(self, bundle_path: Path) -> LoadedCaptionBundle:
        return load_caption_bundle(bundle_path, device=str(self.device), dtype=self.dtype)

    @torch.inference_mode()
    def _warm_up(self) -> None:
        assert self.bundle is not None
        image = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=self.device, dtype=self.dtype)
        vocabulary = self.bundle.vocabulary
        features = self.bundle.captioner.image_features(image)
        decode_batch(self.bundle.captioner.decoder, features, [self.bundle.policies["full"]], vocabulary.start_id,
                     vocabulary.end_id, 2)  # fmt: skip

    @torch.inference_mode()
    def run_batch(self, batch: list[CaptionWorkItem]) -> None:
        assert self.bundle is not None
        for item in batch:
            if item.cancelled:  # the client left while the batch was filling: spend nothing on it
                self._drop(item, 0, "client_gone")
        active = [item for item in batch if not item.cancelled]
        if not active:
            return
        self.metrics.batch_size.observe(len(active))
        images = torch.stack([item.image for item in active]).to(self.device, self.dtype)  # (B, 3, 224, 224)
        features = self.bundle.captioner.image_features(images)  # (B, P, C)
        vocabulary = self.bundle.vocabulary

        def abandoned(row: int) -> bool:
            return active[row].cancelled or active[row].deadline <= time.monotonic()

        def finished(row: int, caption: DecodedCaption) -> None:
            item = active[row]
            if caption.complete:
                self._answer(item, caption)
            else:  # abandoned part-way: count the decoder layers its tokens did run
                self._drop(item, sum(caption.exit_layers), "client_gone" if item.cancelled else "timeout")

        decode_batch(self.bundle.captioner.decoder, features, [item.policy for item in active], vocabulary.start_id,
                     vocabulary.end_id, self.bundle.max_length, abandoned, finished)  # fmt: skip

    def _answer(self, item: CaptionWorkItem, caption: DecodedCaption) -> None:
        assert self.bundle is not None
        histogram = self.metrics.exit_layer.labels(item.policy_name, TASK)
        for layer in caption.exit_layers:
            histogram.observe(layer)
        self.metrics.layers_computed.labels(TASK).inc(sum(caption.exit_layers))
        self.metrics.layers_possible.labels(TASK).inc(self.bundle.num_layers * len(caption.exit_layers))
        item.on_done(CaptionOutcome(tuple(caption.tokens), tuple(caption.exit_layers)))
