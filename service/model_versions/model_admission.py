"""Admission and batching settings per model (issue 25): one wait budget does not fit classification (milliseconds
a row) and captions (hundreds of milliseconds a row), so each model serves with its own.

Where a model's value comes from, first found wins:
1. `serving.json` in the model's directory, beside its versions (`model_store/<name>/serving.json`): any of
   `ADMISSION_FIELDS`, checked like the server flags; it applies to every version of the model.
2. the server's setting, when it was given (flag or environment variable);
3. the model's task default (`Task.admission_defaults`, service/tasks.py): captions wait longer; and for
   `torch_threads`, a share of the cores when several models are served (`CORES // models`, at least 1): with
   torch's default every engine runs as many OpenMP threads as there are cores, and two loaded models on 2 cores
   kept 50-54% of their solo throughput at 1.94-2.18x their solo p95, against 83-91% and 1.09-1.35x with one
   thread each (`python -m bench.two_models`, bench/results/two_models_cpu.md; solo throughput is lower with one
   thread: 149 against 235 req/s);
4. the server setting's default.

`/v1/models` shows each model's values and where each came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from beem.bundle.manifest import BundleError
from service.settings import ServerSettings
from service.tasks import task_named

SERVING_FILE = "serving.json"
ADMISSION_FIELDS = ("max_queue", "max_queue_wait_ms", "max_batch_wait_ms", "max_batch_size", "max_batch_tokens",
                    "torch_threads")  # fmt: skip
CORES = torch.get_num_threads()  # torch's default, read at import: before any engine thread sets its own


class ModelServingFile(BaseModel):
    """`serving.json`: the admission and batching settings of one model, with the server flags' bounds."""

    model_config = ConfigDict(extra="forbid")

    max_queue: int | None = Field(None, ge=1)
    max_queue_wait_ms: float | None = Field(None, gt=0)
    max_batch_wait_ms: float | None = Field(None, ge=0, le=1000)
    max_batch_size: int | None = Field(None, ge=1, le=1024)
    max_batch_tokens: int | None = Field(None, ge=16)
    torch_threads: int | None = Field(None, ge=1)


@dataclass(frozen=True)
class ModelAdmission:
    """The settings one model serves with, and where each admission value came from."""

    settings: ServerSettings
    sources: dict[str, str]  # field -> "model" | "server" | "task default" | "a share of N cores" | "server default"

    def summary(self) -> dict[str, object]:
        return {name: {"value": getattr(self.settings, name), "from": self.sources[name]} for name in ADMISSION_FIELDS}


def model_admission(
    settings: ServerSettings, task_name: str, model_dir: Path, models_served: int = 1
) -> ModelAdmission:
    """Raises BundleError for a `serving.json` that is not valid JSON or sets something it may not."""
    own = _read_serving_file(model_dir)
    defaults: dict[str, object] = dict(task_named(task_name).admission_defaults)
    if models_served > 1:
        defaults["torch_threads"] = max(1, CORES // models_served)
    updates: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name in ADMISSION_FIELDS:
        if getattr(own, name) is not None:
            updates[name], sources[name] = getattr(own, name), "model"
        elif name in settings.model_fields_set:
            sources[name] = "server"
        elif name in defaults:
            updates[name] = defaults[name]
            sources[name] = "task default" if name != "torch_threads" else f"a share of {CORES} cores"
        else:
            sources[name] = "server default"
    try:
        effective = ServerSettings.model_validate({**settings.model_dump(), **updates}) if updates else settings
    except ValidationError as error:  # e.g. a model's max_queue below max_inputs_per_request
        raise BundleError(model_dir / SERVING_FILE, f"does not fit the server's settings: {error}") from error
    return ModelAdmission(effective, sources)


def _read_serving_file(model_dir: Path) -> ModelServingFile:
    path = model_dir / SERVING_FILE
    if not path.is_file():
        return ModelServingFile.model_validate({})
    try:
        return ModelServingFile.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as error:
        raise BundleError(path, f"not a valid {SERVING_FILE}: {error}") from error
