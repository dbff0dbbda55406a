"""Make mmpose 1.3.2 import and run on CPU torch with mmcv-lite.

mmpose imports, at module level, four things this project does not (or cannot) install:

- ``xtcocotools`` (its COCO API): PyPI wheels are built for NumPy 1, and the sdist compiles under NumPy 2 but
  fails at run time (``np.NPY_OWNDATA``). ``pycocotools`` (which has NumPy 2 wheels) provides the same API.
- ``torchvision.transforms.ToPILImage`` (only the SimCC heatmap visualiser uses it; torchvision would pull a
  CUDA build of torch).
- ``mmcv.ops.MultiScaleDeformableAttention`` (EDPose only; mmcv-lite has no compiled ops).
- ``mmdet.utils.ConfigType`` / ``reduce_mean`` (the RTMO head only).

Also, RTMPose configs name the backbone ``mmdet.CSPNeXt``; mmpose ships its own identical CSPNeXt.

:func:`ensure_mmpose_importable` first asks :mod:`importlib` whether each real package imports (and, for
xtcocotools, works) and uses it when it does. Only what is missing gets a stand-in:

- xtcocotools -> a thin adapter over pycocotools, kept installed (it is a working COCO API);
- torchvision / mmcv.ops / mmdet -> minimal stand-ins present only *while mmpose is imported*, then removed
  from ``sys.modules`` again, so the rest of the process (and libraries that probe for torchvision) still see
  that these packages are absent. mmpose's own ``try: from mmcv.ops import DeformConv2d`` probes keep
  answering "no mmcv-full", because the mmcv.ops stand-in only carries the one name imported unconditionally;
- ``mmdet.CSPNeXt`` -> mmpose's CSPNeXt registered in an ``mmdet``-scoped child of mmengine's MODELS
  registry, only when the real mmdet cannot be imported.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import logging
import sys
import threading
import types
import warnings
from typing import Callable

log = logging.getLogger(__name__)

#: Attribute set on every module this file creates.
STANDIN_MARK = "__posecrop_standin__"

#: mmpose packages imported while the temporary stand-ins are in place (together they import every mmpose
#: module that touches torchvision / mmcv.ops / mmdet at module level).
MMPOSE_PACKAGES = (
    "mmpose.apis", "mmpose.models", "mmpose.datasets", "mmpose.evaluation",
    "mmpose.visualization", "mmpose.engine", "mmpose.codecs", "mmpose.structures",
)

CSPNEXT_ALIAS = "stand-in (mmpose CSPNeXt)"

_lock = threading.RLock()
_report: dict[str, str] | None = None


# --------------------------------------------------------------------------------------------- probing


def is_standin(module: types.ModuleType | None) -> bool:
    """True for modules created by this file."""
    return bool(getattr(module, STANDIN_MARK, False))


def real_module_available(name: str) -> bool:
    """True when the real module ``name`` imports (any exception at import time counts as unavailable: broken
    binary wheels raise ValueError/RuntimeError/OSError, not only ImportError)."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        return not is_standin(loaded)
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import-time failure means "not usable"
        log.debug("real %s does not import: %s: %s", name, type(exc).__name__, exc)
        return False
    return True


def _xtcocotools_works() -> bool:
    """The real xtcocotools imports and its compiled mask API runs (the NumPy-2 sdist build imports fine but
    fails on the first call)."""
    if not all(real_module_available(m) for m in ("xtcocotools.coco", "xtcocotools.cocoeval", "xtcocotools.mask")):
        return False
    try:
        mask = sys.modules["xtcocotools.mask"]
        area = mask.area(mask.frPyObjects([[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]], 8, 8))
        return float(sum(area)) > 0
    except Exception as exc:  # noqa: BLE001
        log.debug("real xtcocotools imports but does not work: %s: %s", type(exc).__name__, exc)
        return False


# --------------------------------------------------------------------------------------------- module plumbing


def _new_module(name: str, doc: str, package: bool = False) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=package)
    if package:
        module.__path__ = []  # a package with no submodules on disk
    setattr(module, STANDIN_MARK, True)
    return module


def _install(modules: dict[str, types.ModuleType]) -> None:
    """Put modules into sys.modules and bind each as an attribute of its (real or stand-in) parent."""
    for name, module in modules.items():
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent and parent in sys.modules:
            setattr(sys.modules[parent], child, module)


def _uninstall(modules: dict[str, types.ModuleType]) -> None:
    for name, module in reversed(list(modules.items())):
        if sys.modules.get(name) is module:
            del sys.modules[name]
        parent, _, child = name.rpartition(".")
        if parent and getattr(sys.modules.get(parent), child, None) is module:
            delattr(sys.modules[parent], child)


def _purge(prefix: str) -> None:
    """Forget a package that failed to import properly (its half-loaded submodules included)."""
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def _unavailable(feature: str, needs: str) -> Callable:
    def fail(*_args, **_kwargs):
        raise ImportError(f"{feature} needs {needs}, which is not installed (posecrop.mmpose_compat stand-in)")
    return fail


# --------------------------------------------------------------------------------------------- xtcocotools


def _xtcocotools_from_pycocotools() -> dict[str, types.ModuleType]:
    """xtcocotools' API (COCO, COCOeval with sigmas/use_area, mask) backed by pycocotools."""
    import numpy as np
    import pycocotools.coco
    import pycocotools.cocoeval
    import pycocotools.mask

    pkg = _new_module("xtcocotools", "Stand-in for xtcocotools backed by pycocotools (posecrop.mmpose_compat).", True)
    pkg.__version__ = "pycocotools-adapter"
    coco = _new_module("xtcocotools.coco", "xtcocotools.coco -> pycocotools.coco")
    coco.COCO = pycocotools.coco.COCO

    class COCOeval(pycocotools.cocoeval.COCOeval):
        """pycocotools' COCOeval with xtcocotools' constructor: per-keypoint OKS ``sigmas`` and ``use_area``."""

        def __init__(self, cocoGt=None, cocoDt=None, iouType="keypoints", sigmas=None, use_area=True):
            if iouType not in ("segm", "bbox", "keypoints"):
                raise NotImplementedError(f"COCOeval iouType {iouType!r} needs the real xtcocotools")
            if not use_area:
                raise NotImplementedError("COCOeval(use_area=False) needs the real xtcocotools")
            super().__init__(cocoGt, cocoDt, iouType)
            if sigmas is not None:
                self.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)

    cocoeval = _new_module("xtcocotools.cocoeval", "xtcocotools.cocoeval -> pycocotools.cocoeval")
    cocoeval.COCOeval = COCOeval
    cocoeval.Params = pycocotools.cocoeval.Params
    mask = _new_module("xtcocotools.mask", "xtcocotools.mask -> pycocotools.mask")
    for fn in ("encode", "decode", "area", "toBbox", "iou", "merge", "frPyObjects"):
        setattr(mask, fn, getattr(pycocotools.mask, fn))
    return {"xtcocotools": pkg, "xtcocotools.coco": coco, "xtcocotools.cocoeval": cocoeval, "xtcocotools.mask": mask}


def _xtcocotools_missing() -> dict[str, types.ModuleType]:
    """Import-only stand-in when neither xtcocotools nor pycocotools is usable: using it raises ImportError."""
    need = "xtcocotools or pycocotools"
    pkg = _new_module("xtcocotools", "Import-only stand-in for xtcocotools (posecrop.mmpose_compat).", True)
    coco = _new_module("xtcocotools.coco", "unavailable")
    coco.COCO = _unavailable("the COCO annotation API", need)
    cocoeval = _new_module("xtcocotools.cocoeval", "unavailable")
    cocoeval.COCOeval = _unavailable("COCO evaluation", need)
    mask = _new_module("xtcocotools.mask", "unavailable")
    for fn in ("encode", "decode", "area", "toBbox", "iou", "merge", "frPyObjects"):
        setattr(mask, fn, _unavailable(f"xtcocotools.mask.{fn}", need))
    return {"xtcocotools": pkg, "xtcocotools.coco": coco, "xtcocotools.cocoeval": cocoeval, "xtcocotools.mask": mask}


def _ensure_xtcocotools() -> str:
    if _xtcocotools_works():
        return "real"
    loaded = sys.modules.get("xtcocotools")
    if is_standin(loaded):
        return loaded.__posecrop_kind__
    _purge("xtcocotools")
    if real_module_available("pycocotools.coco") and real_module_available("pycocotools.mask"):
        modules, kind = _xtcocotools_from_pycocotools(), "stand-in (pycocotools)"
    else:
        modules, kind = _xtcocotools_missing(), "stand-in (unavailable: install pycocotools)"
    modules["xtcocotools"].__posecrop_kind__ = kind
    _install(modules)
    return kind


# --------------------------------------------------------------------------------------------- import-time stand-ins


def _torchvision_standin() -> dict[str, types.ModuleType]:
    import numpy as np
    from PIL import Image

    class ToPILImage:
        """The one torchvision transform mmpose imports (SimCC heatmap drawing): a (C,H,W)/(H,W) tensor or
        array, float in [0, 1] or uint8, to a PIL image."""

        def __init__(self, mode: str | None = None):
            self.mode = mode

        def __call__(self, pic) -> Image.Image:
            arr = pic.detach().cpu().numpy() if hasattr(pic, "detach") else np.asarray(pic)
            if arr.ndim == 3:
                arr = arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))
            if arr.dtype != np.uint8:
                arr = np.clip(arr * 255.0, 0, 255).astype(np.uint8)
            return Image.fromarray(arr, mode=self.mode)

    pkg = _new_module("torchvision", "Import-time stand-in for torchvision (posecrop.mmpose_compat).", True)
    transforms = _new_module("torchvision.transforms", "Import-time stand-in: ToPILImage only.")
    transforms.ToPILImage = ToPILImage
    return {"torchvision": pkg, "torchvision.transforms": transforms}


def _mmcv_ops_standin() -> dict[str, types.ModuleType]:
    import torch.nn as nn

    class MultiScaleDeformableAttention(nn.Module):
        """Placeholder for mmcv-full's compiled op (EDPose only): constructing it raises ImportError."""

        def __init__(self, *args, **kwargs):
            raise ImportError("MultiScaleDeformableAttention needs the full mmcv (compiled mmcv.ops); "
                              "mmcv-lite has none. Install mmcv to run EDPose models.")

    ops = _new_module("mmcv.ops", "Import-time stand-in for mmcv.ops: only the names mmpose imports unconditionally.")
    ops.MultiScaleDeformableAttention = MultiScaleDeformableAttention
    return {"mmcv.ops": ops}


def _mmdet_standin() -> dict[str, types.ModuleType]:
    from typing import Union

    from mmengine.config import ConfigDict

    pkg = _new_module("mmdet", "Import-time stand-in for mmdet (posecrop.mmpose_compat).", True)
    utils = _new_module("mmdet.utils", "Import-time stand-in: ConfigType and reduce_mean (RTMO head).")
    utils.ConfigType = Union[ConfigDict, dict]
    utils.reduce_mean = importlib.import_module("mmpose.utils.dist_utils").reduce_mean
    return {"mmdet": pkg, "mmdet.utils": utils}


def _register_cspnext_alias() -> str:
    """Resolve ``mmdet.CSPNeXt`` (RTMPose configs) to mmpose's CSPNeXt when the real mmdet is absent."""
    from mmengine.registry import MODELS as ROOT_MODELS
    from mmengine.registry import Registry

    existing = ROOT_MODELS._children.get("mmdet")
    if existing is not None:
        return CSPNEXT_ALIAS if getattr(existing, STANDIN_MARK, False) else "real"
    if real_module_available("mmdet.models"):
        return "real"
    from mmpose.models.backbones import CSPNeXt

    # `locations` is what mmengine imports before a lookup here (without it, it would try mmdet.utils and log).
    alias = Registry("model", parent=ROOT_MODELS, scope="mmdet", locations=["mmpose.models"])
    setattr(alias, STANDIN_MARK, True)
    alias.register_module(name="CSPNeXt", module=CSPNeXt)
    return CSPNEXT_ALIAS


# --------------------------------------------------------------------------------------------- entry point


def ensure_mmpose_importable() -> dict[str, str]:
    """Import mmpose (apis, models, datasets, evaluation, ...) with stand-ins for whatever real package is missing.

    Idempotent and thread-safe; returns ``{component: "real" | "stand-in ..."}`` for xtcocotools, torchvision,
    mmcv.ops, mmdet.utils and the mmdet.CSPNeXt alias (the same dict on every call).
    """
    global _report
    with _lock:
        if _report is not None:
            return dict(_report)
        report = {"xtcocotools": _ensure_xtcocotools()}
        temporary: dict[str, types.ModuleType] = {}
        if real_module_available("torchvision.transforms"):
            report["torchvision"] = "real"
        else:
            _purge("torchvision")
            temporary.update(_torchvision_standin())
            report["torchvision"] = "stand-in (import time only)"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*", category=UserWarning)
            import mmcv  # noqa: F401  (the real mmcv or mmcv-lite: mmcv.ops is its subpackage)

        if real_module_available("mmcv.ops"):
            report["mmcv.ops"] = "real"
        else:
            temporary.update(_mmcv_ops_standin())
            report["mmcv.ops"] = "stand-in (import time only)"
        if real_module_available("mmdet.utils"):
            report["mmdet.utils"] = "real"
        else:
            _purge("mmdet")
            temporary.update(_mmdet_standin())
            report["mmdet.utils"] = "stand-in (import time only)"
        _install(temporary)
        try:
            with warnings.catch_warnings():
                # Import-time notices this report already covers (mmcv-lite has no compiled ops) and mmengine's
                # use of the deprecated pkg_resources.
                warnings.filterwarnings("ignore", message=".*MultiScaleDeformableAttention.*", category=UserWarning)
                warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*", category=UserWarning)
                warnings.filterwarnings("ignore", message=".*torch.jit.* is deprecated.*", category=DeprecationWarning)
                for name in MMPOSE_PACKAGES:
                    importlib.import_module(name)
        finally:
            _uninstall(temporary)
        report["mmdet.CSPNeXt"] = _register_cspnext_alias()
        log.debug("mmpose compatibility: %s", report)
        _report = report
        return dict(report)
