"""The classification engine (DESIGN 6): the task's pieces, once, around a layer path.

It owns what every way of running the layers shares: loading the bundle, one row of policy parameters per
(policy, depth limit) made once and reused, the answers built from what an exit said (`class_answers.py`), and
every row's way out through the ledger. How rows travel through the layers (groups, shapes, read backs) is the
layer path's (`layer_path.py`): `host/` on the CPU, `device/` on CUDA, picked by name (`layer_paths.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from beem.bundle.bundle_reader import LoadedBundle, load_bundle
from beem.bundle.manifest import Manifest
from beem.policies.array_policies import RowPolicies
from beem.policies.exit_policies import ExitPolicy
from service.engine.admission_queue import AdmissionQueue
from service.engine.classify.class_answers import class_answers
from service.engine.classify.device.device_path import DEFAULT_DEVICE_PATH_OPTIONS, DevicePathOptions
from service.engine.classify.group_selection import GROUP_SELECTION_RULES
from service.engine.classify.layer_path import LayerPath, LeftRows, PathSetting
from service.engine.classify.layer_paths import LAYER_PATHS, PathFactory
from service.engine.classify.tokenized_row import TokenizedRow
from service.engine.drain_rate import DrainRate
from service.engine.row_ledger import RowLedger
from service.engine.row_outcome import RowFate
from service.engine.step_engine import EngineBudget, StepEngine
from service.metrics import ServiceMetrics

POLICY_ROW_CACHE_SIZE = 1024  # (policy, depth limit) pairs whose parameter rows are kept ready


class ClassificationEngine(StepEngine[LoadedBundle, TokenizedRow]):
    def __init__(
        self,
        *,
        task: str,
        queue: AdmissionQueue[TokenizedRow],
        ledger: RowLedger,
        drain: DrainRate,
        metrics: ServiceMetrics,
        budget: EngineBudget,
        device: str,
        dtype: str,
        engine_path: str = "host",
        device_path_options: DevicePathOptions = DEFAULT_DEVICE_PATH_OPTIONS,
    ) -> None:
        """`engine_path`: the layer path's name (`layer_paths.py`); `device_path_options`: the device path's."""
        super().__init__(task=task, queue=queue, ledger=ledger, drain=drain, metrics=metrics, budget=budget,
                         device=device, dtype=dtype)  # fmt: skip
        if budget.group_selection not in GROUP_SELECTION_RULES:
            raise ValueError(f"group_selection {budget.group_selection!r}: expected one of {GROUP_SELECTION_RULES}")
        if engine_path not in LAYER_PATHS:
            raise ValueError(f"engine_path {engine_path!r}: expected one of {sorted(LAYER_PATHS)}")
        self.engine_path = engine_path
        self.make_path: PathFactory = LAYER_PATHS[engine_path](device_path_options)
        self.path: LayerPath | None = None  # built with the bundle: a path is whole when it exists
        self._policy_row_cache: dict[tuple[ExitPolicy, int], RowPolicies] = {}
        self._num_layers = 0  # the bundle's, once loaded

    def _load_bundle(self, bundle_path: Path, manifest: Manifest | None) -> LoadedBundle:
        bundle = load_bundle(bundle_path, device=str(self.device), dtype=self.dtype, manifest=manifest)
        setting = PathSetting(bundle=bundle, device=self.device, dtype=self.dtype, budget=self.budget,
                              metrics=self.metrics, exits=self)  # fmt: skip
        self.path = self.make_path(setting)
        self._num_layers = bundle.num_layers
        return bundle

    def _release_loaded(self) -> None:
        self.path = None
        self._policy_row_cache.clear()

    def _warm_up(self) -> None:
        self._loaded_path().warm_up()

    def _loaded_path(self) -> LayerPath:
        if self.path is None:
            raise RuntimeError("the classification engine has no bundle loaded")
        return self.path

    @property
    def inflight_rows(self) -> int:
        return 0 if self.path is None else self.path.inflight_rows

    @property
    def inflight_tokens(self) -> int:
        return 0 if self.path is None else self.path.inflight_tokens

    def _all_rows(self) -> Sequence[tuple[TokenizedRow, int]]:
        return [] if self.path is None else self.path.all_rows()

    def _rows_of_failed_step(self) -> Sequence[tuple[TokenizedRow, int]]:
        return self._loaded_path().rows_of_failed_step()

    def _join(self, items: list[TokenizedRow]) -> None:
        self._loaded_path().join(items, [self._policy_rows(item) for item in items], self._cancellations)

    def _step(self) -> None:
        self._loaded_path().step(self._cancellations)

    def _policy_rows(self, item: TokenizedRow) -> RowPolicies:
        """One row of policy parameters, made once per (policy, depth limit): requests reuse the bundle's
        calibrated policies, so joining rows mostly concatenates ready tensors."""
        key = (item.policy, item.last_layer)
        rows = self._policy_row_cache.get(key)
        if rows is None:
            if len(self._policy_row_cache) >= POLICY_ROW_CACHE_SIZE:
                self._policy_row_cache.clear()
            num_layers = self._num_layers
            # Built on the host and moved without waiting (a blocking copy would stall the GPU path's stream).
            rows = RowPolicies.of([item.policy], [item.last_layer], num_layers, "cpu")
            rows = rows.to(self.device, non_blocking=True)
            self._policy_row_cache[key] = rows
        return rows

    # -- RowExits: how rows leave the path --------------------------------------------------------------------

    def answered(self, left: LeftRows) -> None:
        for item, answer in zip(left.rows, class_answers(left), strict=True):
            self._answer(item, answer)

    def abandoned(self, row: TokenizedRow, fate: RowFate, layers_run: int) -> None:
        self._drop([row], fate, layers_run)
