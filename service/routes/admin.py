"""POST /admin/reload: look for new versions of the served models now (as polling and SIGHUP do), behind the API
key. Refused versions are tried again: this is how an operator says "I fixed it"."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request

from service.model_versions.hot_swap import VersionWatcher
from service.routes.dependencies import Models, require_api_key

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/admin/reload")
async def reload(request: Request, models: Models) -> dict[str, Any]:
    """Swap in every newer version (each verified, loaded and warmed before it serves); what happened to each,
    and the version of every model serving now."""
    watcher: VersionWatcher = request.app.state.watcher
    outcomes = await watcher.reload(retry_refused=True)
    return {
        "reloads": [asdict(outcome) for outcome in outcomes],
        "serving": {name: model.active.version for name, model in sorted(models.models.items())},
    }
