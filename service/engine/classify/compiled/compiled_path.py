"""The compiled layer path: the host path (`host/host_path.py`: groups of any shape, decisions read back every
step) with every encoder layer and exit head compiled by `torch.compile` (`compiled_layers.py`), eager as the
fallback. Chosen with `engine_path=compiled`; never picked by `auto`: on the 2-core CPU it measured no faster than
eager (README, "Compiled layer steps"), and it costs tens of seconds of compilation at warm-up.

Warm-up compiles the shapes serving makes (one row; several rows, padded and not) before the server says it is
ready, and reports how long it took (`detail`, shown in `/info`). Rows, answers and exits are the host path's:
only the functions that run a layer and a head differ.
"""

from __future__ import annotations

import logging
import time
from typing import ClassVar

import torch

from service.engine.classify.compiled.compiled_layers import CompiledLayers, Compiler
from service.engine.classify.host.host_path import HostPath
from service.engine.classify.layer_path import PathSetting

log = logging.getLogger(__name__)
# What warm-up runs through every compiled layer and head: the four graphs each gets. Inductor specializes a size
# of 1, and a group with padding carries a layer mask where one without has none: one row alone, rows of unequal
# lengths, rows of one length, and the longest of a padded group left alone (it keeps the group's mask).
UNEQUAL = ["warm up the compiled layers", "and their padded batches, several times over"]
WARM_UP_TEXTS = (UNEQUAL[:1], UNEQUAL, ["the same row twice", "the same row twice"])


class CompiledPath(HostPath):
    name: ClassVar[str] = "compiled"

    def __init__(self, setting: PathSetting, compiler: Compiler | None = None) -> None:
        super().__init__(setting)
        self.compiled_layers = CompiledLayers(setting.bundle.model, compiler)
        self.layers = self.compiled_layers
        self.warm_up_s: float | None = None

    @property
    def detail(self) -> str:
        """One line for `/info`: compiled and how long warm-up took, or why it runs eagerly."""
        if not self.compiled_layers.compiled:
            return f"eager fallback: {self.compiled_layers.fallback_reason}"
        if self.warm_up_s is None:
            return "compiled (not warmed up yet)"
        return f"compiled with torch.compile in {self.warm_up_s:.1f} s at warm-up"

    @torch.inference_mode()
    def warm_up(self) -> None:
        started = time.perf_counter()
        model, device = self.bundle.model, self.setting.device
        states = []
        for texts in WARM_UP_TEXTS:
            encoded = self.bundle.tokenizer(texts, padding=True, return_tensors="pt")
            states.append(
                model.embed(
                    encoded["input_ids"].to(device),
                    encoded["attention_mask"].to(device),
                    encoded["token_type_ids"].to(device) if "token_type_ids" in encoded else None,
                )
            )
        longest_alone = states[1].select_rows(torch.tensor([1], device=device))  # (1, T) with the pair's mask
        for start in (*states, longest_alone):
            state = start
            for _ in range(self.bundle.num_layers):
                state = self.layers.run_layer(state)
                self.layers.exit_logits(state)
        self.warm_up_s = time.perf_counter() - started
        log.info("compiled layer path: %s", self.detail)
