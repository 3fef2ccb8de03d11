"""From an uploaded image to its caption: decode the file off the event loop, pick the policy, enqueue, await.

The caption route checks readiness once (the `ready_captioner` dependency) and only shapes requests and
responses; this is where an image meets the caption engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import Request

from beem.captioning.caption_bundle import LoadedCaptionBundle
from beem.policies.exit_policies import ExitPolicy
from service.answer_waiting import RequestAnswers
from service.engine.caption.caption_engine import CaptionEngine
from service.engine.caption.image_row import ImageRow
from service.engine.row_outcome import CaptionAnswer
from service.errors import NotReadyError
from service.image_input import image_from_bytes
from service.monitoring.shadow_monitor import ShadowMonitor
from service.policy_choice import ChosenPolicy, choose_policy
from service.schemas import PolicySpec
from service.settings import ServerSettings

SHADOW_DEADLINE_S = 30.0  # a shadow caption not started by then is dropped (counted as timeout)


class CaptionService:
    """Owns the caption engine; `ready()` is the one readiness check a request makes."""

    def __init__(self, engine: CaptionEngine, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.live_policies: Mapping[str, ExitPolicy] = {}  # what requests are served with (a read-only view:
        # online control moves them)
        self.monitor: ShadowMonitor | None = None  # set once the bundle is loaded

    def ready(self) -> ReadyCaptioner:
        """The loaded, warmed-up captioner; 503 while it is still loading (before any image is decoded)."""
        bundle = self.engine.bundle
        if bundle is None or not self.engine.health().warmed_up:
            raise NotReadyError("the model is still loading; retry shortly")
        return ReadyCaptioner(self, bundle)


@dataclass(frozen=True)
class ReadyCaptioner:
    service: CaptionService
    bundle: LoadedCaptionBundle

    def policy(self, spec: PolicySpec | None) -> ChosenPolicy:
        return choose_policy(self.bundle.manifest, self.service.live_policies or self.bundle.policies, spec)

    async def caption(self, request: Request, image_bytes: bytes, chosen: ChosenPolicy) -> CaptionAnswer:
        settings, engine = self.service.settings, self.service.engine
        engine.queue.check(1)  # shed (429) before decoding the image
        started = time.perf_counter()
        image = await asyncio.to_thread(image_from_bytes, image_bytes, settings.max_image_pixels)
        answers = RequestAnswers(asyncio.get_running_loop(), 1, CaptionAnswer)
        item = ImageRow(
            image=image,
            policy=chosen.policy,
            policy_name=chosen.name,
            deadline=time.monotonic() + settings.request_timeout_s,
            on_done=answers.callback(0),
        )
        engine.submit([item])
        (answer,) = await answers.wait(request, [item], settings.request_timeout_s, engine.notice_cancellation)
        monitor = self.service.monitor
        if monitor is not None and monitor.monitors(chosen.name, chosen.policy):
            self._shadow(monitor, chosen, item, answer, time.perf_counter() - started)
        return answer

    def _shadow(
        self,
        monitor: ShadowMonitor,
        chosen: ChosenPolicy,
        item: ImageRow,
        answer: CaptionAnswer,
        latency_s: float,
    ) -> None:
        """Count the caption for the agreement monitor (early: some token left before the last layer) and, when
        sampled, caption the image again at full depth, at low priority."""
        early = any(layer < self.bundle.num_layers for layer in answer.exit_layers)
        if monitor.observe_rows(chosen.name, [early], latency_s):
            self.service.engine.queue.submit_shadow(ImageRow(
                image=item.image, policy=self.bundle.policies["full"], policy_name="full",
                deadline=time.monotonic() + SHADOW_DEADLINE_S, on_done=monitor.comparison(chosen.name, chosen.policy,
                                                                                          answer), shadow=True,
            ))  # fmt: skip
