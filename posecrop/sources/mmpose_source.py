"""The `mmpose` pose source: a top-down COCO-17 model (RTMPose by default) run on whole images, batched.

Each source image is the person box (a ReID image is already a detector crop). Images go through the config's
own test pipeline one by one (LoadImage -> GetBBoxCenterScale -> TopdownAffine -> PackPoseInputs, as mmpose's
``inference_topdown`` does), are collated into batches of ``batch_size`` and run through the model's data
preprocessor and ``test_step`` once per batch. Predictions (source pixels) are converted to COCO-18.

Weights: ``checkpoint=None`` loads the config's weights URL (``load_from``, else mmpose's metafile entry for
the config) through mmengine's checkpoint loader, which caches under torch hub (``$TORCH_HOME/checkpoints``);
``checkpoint=PATH`` loads a local file; ``checkpoint="random"`` keeps random weights (tests/benchmarks only).
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import numpy as np

from reidkit.errors import ReidError

from ..keypoints import coco17_to_coco18, mark_missing
from .base import PoseBatchItem

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
#: Shipped configs (name -> path); `config=` also accepts any of these names.
SHIPPED_CONFIGS = {p.stem: p for p in sorted(CONFIG_DIR.glob("*.py"))}
DEFAULT_CONFIG = CONFIG_DIR / "rtmpose-s_coco17-256x192.py"
RANDOM = "random"
RANDOM_SEED = 0


class PoseConfigError(ReidError, ValueError):
    """The mmpose config is missing, unreadable, or not a top-down COCO-17 model. The message names the file."""


class PoseCheckpointError(ReidError, ValueError):
    """The weights could not be obtained or do not fit the model. The message names the path or URL."""


class RandomWeightsWarning(UserWarning):
    """The pose model runs with random weights: its keypoints are meaningless."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def resolve_config(config: str | os.PathLike | None) -> Path:
    """A config path, or the name of a shipped config (e.g. ``rtmpose-t_coco17-256x192``); None = the default."""
    if config is None:
        return DEFAULT_CONFIG
    if str(config) in SHIPPED_CONFIGS:
        return SHIPPED_CONFIGS[str(config)]
    path = Path(config).expanduser()
    if not path.is_file():
        raise PoseConfigError(f"{path}: mmpose config not found (shipped configs: {', '.join(SHIPPED_CONFIGS)})")
    return path.resolve()


def metafile_weights(config_path: Path) -> str | None:
    """The weights URL that mmpose's model-zoo metafiles list for a config of the same file name."""
    import mmpose
    import yaml

    root = Path(mmpose.__file__).parent / ".mim" / "configs"
    for yml in sorted(root.rglob("*.yml")):
        text = yml.read_text(encoding="utf-8", errors="replace")
        if config_path.name not in text:
            continue
        for entry in (yaml.safe_load(text) or {}).get("Models", []) or []:
            if Path(str(entry.get("Config", ""))).name == config_path.name and entry.get("Weights"):
                return str(entry["Weights"])
    return None


def _numpy_safe_globals() -> list:
    """numpy objects mmengine checkpoints carry in their ``meta`` (dataset_meta arrays), allowed for torch.load's
    weights-only unpickler under both the NumPy 1 and NumPy 2 module names."""
    core = getattr(np, "_core", None) or np.core
    reconstruct, scalar = core.multiarray._reconstruct, core.multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
                                          np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)]
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), scalar,
            (scalar, "numpy.core.multiarray.scalar"), np.ndarray, np.dtype, *dtypes]


def _resolve_metainfo(metainfo: dict) -> dict:
    """Point a relative ``from_file`` (e.g. configs/_base_/datasets/coco.py) at mmpose's installed copy."""
    import mmpose

    source = metainfo.get("from_file")
    if source and not Path(source).is_file():
        installed = Path(mmpose.__file__).parent / ".mim" / "configs" / "_base_" / "datasets" / Path(source).name
        if installed.is_file():
            metainfo = {**metainfo, "from_file": str(installed)}
    return metainfo


def _dataset_meta(cfg) -> dict:
    """Keypoint metainfo from the config's test (else train) dataset, else COCO."""
    from mmpose.datasets.datasets.utils import parse_pose_metainfo
    from mmpose.registry import DATASETS

    for loader in ("test_dataloader", "val_dataloader", "train_dataloader"):
        dataset = (cfg.get(loader) or {}).get("dataset") or {}
        if "metainfo" in dataset:
            return parse_pose_metainfo(_resolve_metainfo(dict(dataset["metainfo"])))
        if "type" in dataset:
            dataset_cls = dataset["type"] if isinstance(dataset["type"], type) else DATASETS.get(dataset["type"])
            if dataset_cls is not None and hasattr(dataset_cls, "METAINFO"):
                return parse_pose_metainfo(_resolve_metainfo(dict(dataset_cls.METAINFO)))
    return parse_pose_metainfo(_resolve_metainfo({"from_file": "configs/_base_/datasets/coco.py"}))


def _test_pipeline(cfg, config_path: Path) -> list:
    for getter in (lambda: cfg.test_dataloader.dataset.pipeline, lambda: cfg.test_pipeline,
                   lambda: cfg.val_dataloader.dataset.pipeline, lambda: cfg.val_pipeline):
        try:
            return list(getter())
        except (AttributeError, KeyError):
            continue
    raise PoseConfigError(f"{config_path}: no test pipeline (test_dataloader.dataset.pipeline or test_pipeline)")


class MMPoseSource:
    """PoseSource running an mmpose top-down COCO-17 model on whole images, in batches."""

    name = "mmpose"

    def __init__(self, config: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
                 device: str = "cpu", batch_size: int = 16, threads: int | None = None,
                 download_timeout: float = 20.0):
        import torch

        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.batch_size = int(batch_size)
        self.device = str(device)
        self.download_timeout = float(download_timeout)
        if threads is not None:
            torch.set_num_threads(int(threads))

        from ..mmpose_compat import ensure_mmpose_importable

        self.compat = ensure_mmpose_importable()
        self.config_path = resolve_config(config)
        self.config_sha256 = hashlib.sha256(self.config_path.read_bytes()).hexdigest()
        cfg = self._read_config()
        self.cfg = cfg
        self.model = self._build_model(cfg)
        self.dataset_meta = _dataset_meta(cfg)
        self._check_coco17("the config's dataset metainfo")
        self.checkpoint: str = RANDOM
        self.checkpoint_file: Path | None = None
        self.checkpoint_sha256: str | None = None
        if checkpoint is not None and str(checkpoint) == RANDOM:
            warnings.warn(f"mmpose pose source {self.config_path.name}: RANDOM WEIGHTS - the keypoints are "
                          "meaningless (checkpoint='random' is for tests and benchmarks only)",
                          RandomWeightsWarning, stacklevel=2)
        else:
            self._load_weights(cfg, checkpoint)
            self._check_coco17(f"the checkpoint {self.checkpoint}")
        self.model.dataset_meta = self.dataset_meta
        self.model.cfg = cfg
        self.model.to(self.device)
        # oneDNN's convolutions run markedly faster on NHWC tensors on CPU; the computation is the same.
        self.channels_last = torch.device(self.device).type == "cpu"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model.eval()

        from mmengine.dataset import Compose
        from mmengine.registry import init_default_scope

        init_default_scope(cfg.get("default_scope", "mmpose"))
        self.pipeline = Compose(_test_pipeline(cfg, self.config_path))

    # ---------------------------------------------------------------------------------------- setup

    def _check_coco17(self, where: str) -> None:
        if int(self.dataset_meta.get("num_keypoints", -1)) != 17:
            raise PoseConfigError(f"{self.config_path}: expected a COCO-17 keypoint model, {where} describes "
                                  f"{self.dataset_meta.get('num_keypoints')} keypoints")

    def _read_config(self):
        from mmengine.config import Config

        try:
            return Config.fromfile(str(self.config_path))
        except Exception as exc:  # noqa: BLE001 - mmengine raises many kinds for a bad config file
            raise PoseConfigError(f"{self.config_path}: cannot read the mmpose config: {exc}") from exc

    def _build_model(self, cfg):
        """The model with random weights (seeded, without touching the global RNG state), like mmpose's
        init_model: no pretrained-backbone init, no training config, SyncBN reverted to BN."""
        import torch
        from mmengine.model.utils import revert_sync_batchnorm
        from mmengine.registry import init_default_scope
        from mmpose.models import build_pose_estimator
        from mmpose.models.pose_estimators import TopdownPoseEstimator

        if "model" not in cfg:
            raise PoseConfigError(f"{self.config_path}: the config defines no `model`")
        model_cfg = cfg.model.copy()
        if "init_cfg" in model_cfg.get("backbone", {}):
            model_cfg.backbone.init_cfg = None
        model_cfg.train_cfg = None
        init_default_scope(cfg.get("default_scope", "mmpose"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            try:
                model = build_pose_estimator(model_cfg)
            except Exception as exc:  # noqa: BLE001 - registry/constructor errors of any kind
                raise PoseConfigError(f"{self.config_path}: cannot build the model: {exc}") from exc
        if not isinstance(model, TopdownPoseEstimator):
            raise PoseConfigError(f"{self.config_path}: expected a top-down pose model (TopdownPoseEstimator), "
                                  f"got {type(model).__name__}")
        return revert_sync_batchnorm(model)

    def _load_weights(self, cfg, checkpoint: str | os.PathLike | None) -> None:
        import torch

        if checkpoint is None:
            source = cfg.get("load_from") or metafile_weights(self.config_path)
            if not source:
                raise PoseCheckpointError(f"{self.config_path}: the config names no weights (no `load_from`, no "
                                          "mmpose metafile entry); pass --pose-checkpoint PATH")
            source = str(source)
        else:
            source = str(Path(checkpoint).expanduser()) if not _is_url(str(checkpoint)) else str(checkpoint)

        if _is_url(source):  # downloaded once into torch's hub folder (where mmengine's loader puts it too)
            local = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(source).path).name
            previous = socket.getdefaulttimeout()
            socket.setdefaulttimeout(self.download_timeout)  # fail fast when the host is unreachable
            try:
                if not local.is_file():
                    local.parent.mkdir(parents=True, exist_ok=True)
                    torch.hub.download_url_to_file(source, str(local), progress=False)  # temp file + move
            except (OSError, http.client.HTTPException) as exc:
                raise PoseCheckpointError(
                    f"could not download the mmpose checkpoint {source} ({type(exc).__name__}: {exc}). Without "
                    f"internet access, fetch that file elsewhere and pass --pose-checkpoint PATH "
                    f"(config: {self.config_path})") from exc
            finally:
                socket.setdefaulttimeout(previous)
        else:
            local = Path(source)
            if not local.is_file():
                raise PoseCheckpointError(f"{local}: checkpoint file not found")
        # weights_only explicitly, for downloaded files too: mmengine's loader leaves it to torch's default (False
        # for URLs; for files an environment variable, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, turns it off)
        from reidkit.atomic import looks_like_torch_file
        if not looks_like_torch_file(local):
            raise PoseCheckpointError(f"{local}: not a checkpoint (neither a torch zip archive nor a pickle; "
                                      f"{local.stat().st_size} bytes)")
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                ckpt = torch.load(str(local), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling errors come in several types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PoseCheckpointError(f"{local}: cannot read the checkpoint: {first}") from exc

        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise PoseCheckpointError(f"{source}: not a model checkpoint (no state_dict)")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            mismatches = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
            raise PoseCheckpointError(f"{source}: the checkpoint does not fit {self.config_path.name}: "
                                      f"{len(mismatches)} weights of another shape, e.g. "
                                      f"{mismatches[:1] or str(exc)[:300]}") from None
        if missing:
            raise PoseCheckpointError(f"{source}: the checkpoint does not fit {self.config_path.name}: "
                                      f"{len(missing)} missing weights, e.g. {missing[:3]}")
        if unexpected:
            log.warning("%s: %d checkpoint entries unused by the model, e.g. %s", source, len(unexpected),
                        unexpected[:3])
        meta = ckpt.get("meta") or {}
        if isinstance(meta, dict) and meta.get("dataset_meta"):
            self.dataset_meta = meta["dataset_meta"]
        self.checkpoint = source
        self.checkpoint_file = local if local.is_file() else None
        self.checkpoint_sha256 = sha256_file(local) if local.is_file() else None

    # ---------------------------------------------------------------------------------------- PoseSource

    def describe(self) -> dict:
        import mmpose
        import torch

        codec = (self.cfg.get("codec") or {})
        return {
            "backend": "mmpose",
            "mmpose_version": mmpose.__version__,
            "config": str(self.config_path),
            "config_sha256": self.config_sha256,
            "checkpoint": self.checkpoint,
            "checkpoint_file": str(self.checkpoint_file) if self.checkpoint_file else None,
            "checkpoint_sha256": self.checkpoint_sha256,
            "random_weights": self.checkpoint == RANDOM,
            "model": type(self.model.backbone).__name__ + "+" + type(self.model.head).__name__,
            "input_size": list(codec.get("input_size", ())),
            "flip_test": bool((self.cfg.model.get("test_cfg") or {}).get("flip_test", False)),
            "person_box": "whole image",
            "keypoints": "COCO-17 -> COCO-18 (neck = shoulder mean, score = min shoulder score)",
            "device": self.device,
            "memory_format": "channels_last" if self.channels_last else "contiguous",
            "batch_size": self.batch_size,
            "threads": torch.get_num_threads(),
            "compat": dict(self.compat),
        }

    def prepare(self, item: PoseBatchItem) -> dict:
        """One image through the config's test pipeline with the whole image as the person box."""
        image = item.image
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{item.record.path}: expected an H x W x 3 uint8 RGB image, got "
                             f"{getattr(image, 'shape', type(image))} {getattr(image, 'dtype', '')}")
        height, width = image.shape[:2]
        info: dict[str, Any] = {
            "img": np.ascontiguousarray(image[..., ::-1]),  # mmpose models take BGR (bgr_to_rgb in the preprocessor)
            "img_path": item.record.path,
            "bbox": np.array([[0, 0, width, height]], dtype=np.float32),
            "bbox_score": np.ones(1, dtype=np.float32),
        }
        info.update(self.dataset_meta)
        return self.pipeline(info)

    def predict_coco17(self, batch: Sequence[PoseBatchItem]) -> tuple[np.ndarray, np.ndarray]:
        """mmpose's COCO-17 predictions (B, 17, 2) in source pixels and scores (B, 17), batch by batch."""
        import torch
        from mmengine.dataset import pseudo_collate

        keypoints = np.zeros((len(batch), 17, 2), dtype=np.float32)
        scores = np.zeros((len(batch), 17), dtype=np.float32)
        for start in range(0, len(batch), self.batch_size):
            data = pseudo_collate([self.prepare(item) for item in batch[start:start + self.batch_size]])
            with torch.no_grad(), warnings.catch_warnings():
                # mmpose's CSP layers call the deprecated torch.cuda.amp.autocast on every forward.
                warnings.filterwarnings("ignore", message=".*torch.cuda.amp.autocast.*", category=FutureWarning)
                samples = self.model.test_step(data)
            for offset, sample in enumerate(samples):
                keypoints[start + offset] = sample.pred_instances.keypoints[0]
                scores[start + offset] = sample.pred_instances.keypoint_scores[0]
        return keypoints, scores

    def estimate(self, batch: Sequence[PoseBatchItem]) -> tuple[np.ndarray, np.ndarray]:
        keypoints, scores = self.predict_coco17(batch)
        return mark_missing(*coco17_to_coco18(keypoints, scores))
