"""open_clip's own model code as the independent reference, imported without torchvision (shared by tests)."""

import importlib
import importlib.util
import sys
import types


def open_clip_model_module() -> types.ModuleType:
    """open_clip/model.py imported by path as `_openclip_ref.model`, without torchvision."""
    if "_openclip_ref.model" in sys.modules:
        return sys.modules["_openclip_ref.model"]
    pkg = types.ModuleType("_openclip_ref")
    pkg.__path__ = list(importlib.util.find_spec("open_clip").submodule_search_locations)
    sys.modules["_openclip_ref"] = pkg
    stubs = {n: types.ModuleType(n) for n in ("torchvision", "torchvision.ops", "torchvision.ops.misc")}
    stubs["torchvision.ops.misc"].FrozenBatchNorm2d = type("FrozenBatchNorm2d", (), {})
    missing = {n: m for n, m in stubs.items() if n not in sys.modules}
    sys.modules.update(missing)
    try:
        importlib.import_module("_openclip_ref.utils")
    finally:
        for n in missing:
            sys.modules.pop(n, None)
    return importlib.import_module("_openclip_ref.model")
