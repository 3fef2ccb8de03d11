"""The layer paths a classification engine can run, by the name `engine_path` gives (`layer_path.py` has the
contract). A new path is one module that implements `LayerPath` and one entry here."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from service.engine.classify.compiled.compiled_path import CompiledPath
from service.engine.classify.device.device_path import DevicePath, DevicePathOptions
from service.engine.classify.host.host_path import HostPath
from service.engine.classify.layer_path import LayerPath, PathSetting

PathFactory = Callable[[PathSetting], LayerPath]

# name -> the factory, given the device path's options (the host path has none)
LAYER_PATHS: dict[str, Callable[[DevicePathOptions], PathFactory]] = {
    HostPath.name: lambda options: HostPath,
    CompiledPath.name: lambda options: CompiledPath,
    DevicePath.name: lambda options: partial(DevicePath, options=options),
}
