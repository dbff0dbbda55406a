"""The `blazepose` pose source: MediaPipe's BlazePose (GHUM "full" landmark model) on each image, on the CPU.

Weights ship inside the `mediapipe==0.10.21` wheel (`mediapipe/modules/pose_landmark/pose_landmark_full.tflite`,
`mediapipe/modules/pose_detection/pose_detection.tflite`): nothing is downloaded. Later mediapipe releases bundle no
model and drop the legacy `mp.solutions` API; only model complexity 1 ("full") is bundled (0 and 2 download at run
time, so they are not offered). Install: `pip install --no-deps mediapipe==0.10.21` plus absl-py, attrs,
flatbuffers and protobuf<7 (scripts/install.sh).

Two ways to find the person (`mode`):
- "roi" (default): the landmark model runs on a fixed region of interest - the whole image, centred, a square of
  side `roi_scale` x the image height - without the person detector (a ReID image is already a detector box).
  MediaPipe's own calculators do what its landmark subgraph (PoseLandmarkByRoiCpu) does - the affine crop, the
  model, the heatmap refinement, the projection back - but on the bundled model pruned to the outputs used
  (LANDMARK_OUTPUTS: the segmentation-mask decoder and the world landmarks are cut away, `prune_tflite`, once per
  machine into the temp folder): the same landmarks as the stock subgraph (max difference 6e-8 on the real crops)
  at about half the CPU (the model ~7.5 instead of ~14 ms per image, the whole graph ~9 instead of ~17 ms on one
  core; benchmarks/bench_blazepose.py). Batching does not pay here: the TFLite model run at batch 4 / 16 costs
  the same or more per image than at batch 1, and XNNPACK runs one thread per graph by default (no
  oversubscription of the crop workers). The heatmap refinement uses the 7x7 window the graph sets, which
  MediaPipe's Python wrapper loses unless its options type is imported (register_calculator_options).
- "detector": `mediapipe.solutions.pose.Pose(static_image_mode=True, model_complexity=1)`, i.e. BlazePose's person
  detector first, then the landmark model on the detected region.
Measured on the 56 real Market-1501 crops (64x128) against pose-gan's OpenPose joints of the 23 crops the CSVs cover
(benchmarks/bench_blazepose.py; PCK counts a joint the model leaves out, or an image without a person, as a miss):
the detector finds a person in 31/56 crops at its default confidence 0.5 (PCK@0.1H 0.51) and in 46/56 at 0.1 (PCK
0.60, median error 0.022 H); the fixed region (roi_scale 1.25) in 55/56 with PCK@0.1H 0.95 and median error
0.019 H, and on 200/200 CUHK01 images (detector: 191/200), at less CPU per image (no detector). roi_scale 1.0 is
worse (PCK 0.91), 1.5 alike (0.96, median 0.020 H). Padding the crop sideways (w/4 each side) changed nothing with
the fixed region and little with the detector (46/56 either way, median error 0.026 H); upscaling 2x gained 4 of
350 joints with the fixed region (PCK 0.963) at more CPU. So the default is the fixed region at 1.25 without padding
or upscaling; `mode`, `roi_scale`, `pad` (fraction of the width added on each side, edge pixels repeated),
`upscale` and `min_detection_confidence` stay options.
In both modes the landmark model's own presence score decides whether a person was found; an image without one
gets an all-missing pose (the crop stage then uses the frame fallback).

Output: the 33 BlazePose landmarks -> COCO-18 by `landmarks_to_coco18` (see LANDMARKS_TO_COCO18; the neck is the
shoulder midpoint with the smaller shoulder visibility); the landmark visibility is the joint score. Coordinates are
source pixels with pixel centres at integer coordinates (posecrop.keypoints); a landmark outside the image
([-0.5, width - 0.5] x [-0.5, height - 0.5]) is missing (NaN, score 0), as OpenPose leaves such joints out.

The model is created on first use in the process that estimates (the crop stage runs this source in its worker
processes, one model per worker: `in_worker = True`); the source object itself pickles without it.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from reidkit.errors import ReidError

from ..keypoints import NUM_KEYPOINTS, mark_missing
from .base import PoseBatchItem, PoseReadError

TESTED_MEDIAPIPE = "0.10.21"
INSTALL_HINT = (f"install it with `pip install --no-deps mediapipe=={TESTED_MEDIAPIPE}` plus `pip install absl-py "
                "attrs flatbuffers 'protobuf<7'` (scripts/install.sh does this; mediapipe releases from 0.10.30 on "
                "bundle no model, and the third-party repack mediapipe-numpy2 must not be installed next to it)")
MODEL_FILES = {"landmark": "modules/pose_landmark/pose_landmark_full.tflite",
               "detector": "modules/pose_detection/pose_detection.tflite"}
MODES = ("roi", "detector")
NUM_LANDMARKS = 33
# For each COCO-18 joint (posecrop.keypoints.KEYPOINT_NAMES) its BlazePose landmark; the neck (-1) is derived.
LANDMARKS_TO_COCO18: tuple[int, ...] = (0, -1, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
_LEFT_SHOULDER, _RIGHT_SHOULDER = 11, 12
NECK = 1

# MediaPipe's own landmark subgraph (PoseLandmarkByRoiCpu): image + region of interest in, landmarks out, with the
# full bundled model (also computing the 256x256 segmentation mask and the world landmarks, which this source does
# not use). Kept as the reference the pruned graph below is tested and benchmarked against (stock_roi_graph).
_STOCK_ROI_GRAPH = """
input_stream: "image"
input_stream: "roi"
output_stream: "landmarks"
input_side_packet: "model_complexity"
node {
  calculator: "PoseLandmarkByRoiCpu"
  input_stream: "IMAGE:image"
  input_stream: "ROI:roi"
  output_stream: "LANDMARKS:landmarks"
  input_side_packet: "MODEL_COMPLEXITY:model_complexity"
}
"""

# The outputs of pose_landmark_full.tflite this source needs: Identity = 39 x (x, y, z, visibility, presence) in
# the 256x256 input's pixels, Identity_1 = the pose presence flag, Identity_3 = the 64x64x39 heatmap MediaPipe refines
# the landmarks with. Identity_2 (the 256x256 segmentation mask) and Identity_4 (world landmarks) are cut away
# with the operators only they need: about 45 % of the model's CPU time goes to the mask's decoder.
LANDMARK_OUTPUTS = ("Identity", "Identity_1", "Identity_3")

# The same computation as PoseLandmarkByRoiCpu with enable_segmentation off (ImageToTensor -> Inference ->
# TensorsToLandmarks -> RefineLandmarksFromHeatmap -> letterbox removal -> projection to the image -> the first 33
# landmarks; the presence flag is thresholded at 0.5 in Python, as the subgraph's ThresholdingCalculator does),
# MediaPipe's own calculators, run on the pruned model: its landmarks equal the stock subgraph's
# (tests/test_blazepose.py, benchmarks/bench_blazepose.py).
_PRUNED_ROI_GRAPH = """
input_stream: "image"
input_stream: "roi"
output_stream: "landmarks"
output_stream: "presence"
node {
  calculator: "ImageToTensorCalculator"
  input_stream: "IMAGE:image"
  input_stream: "NORM_RECT:roi"
  output_stream: "TENSORS:input_tensors"
  output_stream: "LETTERBOX_PADDING:letterbox_padding"
  options: {
    [mediapipe.ImageToTensorCalculatorOptions.ext] {
      output_tensor_width: 256
      output_tensor_height: 256
      keep_aspect_ratio: true
      output_tensor_float_range { min: 0.0 max: 1.0 }
    }
  }
}
node {
  calculator: "InferenceCalculator"
  input_stream: "TENSORS:input_tensors"
  output_stream: "TENSORS:output_tensors"
  options: {
    [mediapipe.InferenceCalculatorOptions.ext] {
      model_path: MODEL_PATH
      delegate { xnnpack {} }
    }
  }
}
node {
  calculator: "SplitTensorVectorCalculator"
  input_stream: "output_tensors"
  output_stream: "landmark_tensor"
  output_stream: "presence_tensor"
  output_stream: "heatmap_tensor"
  options: {
    [mediapipe.SplitVectorCalculatorOptions.ext] {
      ranges: { begin: 0 end: 1 }
      ranges: { begin: 1 end: 2 }
      ranges: { begin: 2 end: 3 }
    }
  }
}
node {
  calculator: "TensorsToFloatsCalculator"
  input_stream: "TENSORS:presence_tensor"
  output_stream: "FLOAT:presence"
}
node {
  calculator: "TensorsToLandmarksCalculator"
  input_stream: "TENSORS:landmark_tensor"
  output_stream: "NORM_LANDMARKS:raw_landmarks"
  options: {
    [mediapipe.TensorsToLandmarksCalculatorOptions.ext] {
      num_landmarks: 39
      input_image_width: 256
      input_image_height: 256
      visibility_activation: SIGMOID
      presence_activation: SIGMOID
    }
  }
}
node {
  calculator: "RefineLandmarksFromHeatmapCalculator"
  input_stream: "NORM_LANDMARKS:raw_landmarks"
  input_stream: "TENSORS:heatmap_tensor"
  output_stream: "NORM_LANDMARKS:refined_landmarks"
  options: {
    [mediapipe.RefineLandmarksFromHeatmapCalculatorOptions.ext] {
      kernel_size: 7
    }
  }
}
node {
  calculator: "LandmarkLetterboxRemovalCalculator"
  input_stream: "LANDMARKS:refined_landmarks"
  input_stream: "LETTERBOX_PADDING:letterbox_padding"
  output_stream: "LANDMARKS:unpadded_landmarks"
}
node {
  calculator: "LandmarkProjectionCalculator"
  input_stream: "NORM_LANDMARKS:unpadded_landmarks"
  input_stream: "NORM_RECT:roi"
  output_stream: "NORM_LANDMARKS:all_landmarks"
}
node {
  calculator: "SplitNormalizedLandmarkListCalculator"
  input_stream: "all_landmarks"
  output_stream: "landmarks"
  options: {
    [mediapipe.SplitVectorCalculatorOptions.ext] {
      ranges: { begin: 0 end: 33 }
    }
  }
}
"""
PRESENCE_THRESHOLD = 0.5


# Lines MediaPipe's C++ code writes to stderr that say nothing to a user: protobuf >= 6.30 lacks the long-deprecated
# MessageFactory.GetPrototype that the 0.10.21 bindings probe at import (nothing this source uses depends on it; the
# onnx / tensorboard the project installs need protobuf >= 6.31), and absl's notice before its logging starts.
# The rest is start-up notices of the first inference (TFLite's XNNPACK delegate, MediaPipe's landmark projection
# saying that a region given in normalised coordinates must be square in pixels - ours is).
_HARMLESS_STDERR = ("'MessageFactory' object has no attribute 'GetPrototype'",
                    "All log messages before absl::InitializeLog() is called are written to STDERR",
                    "Created TensorFlow Lite XNNPACK delegate for CPU",
                    "Feedback manager requires a model with a single signature inference",
                    "Using NORM_RECT without IMAGE_DIMENSIONS is only supported for the square ROI")


@contextlib.contextmanager
def quiet_native_stderr():
    """Hold back what native code writes to file descriptor 2 while the block runs, then pass on every line except
    the known harmless ones (_HARMLESS_STDERR)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        capture_file = tempfile.TemporaryFile()
    except OSError:  # no writable temp folder: let the lines through
        os.close(saved)
        yield
        return
    with capture_file as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if line.strip() and not any(h in line for h in _HARMLESS_STDERR)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class BlazePoseUnavailable(ReidError, ValueError):
    """mediapipe is missing, or is a release without the bundled BlazePose model / the legacy solutions API."""


def landmarks_to_coco18(landmarks: np.ndarray, width: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    """BlazePose landmarks (..., 33, 3) as (x, y, visibility), x and y normalised to the image ([0, 1] spans its
    edges, as MediaPipe reports them), -> COCO-18 keypoints (..., 18, 2) in source pixels (pixel centres at integer
    coordinates) and scores (..., 18) = visibility. The neck is the midpoint of the shoulders, scored with the
    smaller shoulder score. Landmarks outside the image or with non-finite values are missing (NaN, score 0); so is
    the neck when a shoulder is."""
    lm = np.asarray(landmarks, dtype=np.float32)
    if lm.shape[-2:] != (NUM_LANDMARKS, 3):
        raise ValueError(f"expected BlazePose landmarks of shape (..., {NUM_LANDMARKS}, 3), got {lm.shape}")
    xy = lm[..., :2] * np.array([width, height], np.float32) - 0.5
    score = lm[..., 2].copy()
    with np.errstate(invalid="ignore"):
        outside = ((xy[..., 0] < -0.5) | (xy[..., 0] > width - 0.5) | (xy[..., 1] < -0.5) | (xy[..., 1] > height - 0.5)
                   | ~np.isfinite(xy).all(-1) | ~np.isfinite(score))
    score = np.where(outside, 0.0, score).astype(np.float32)
    idx = np.array([i if i >= 0 else 0 for i in LANDMARKS_TO_COCO18])
    kp = xy[..., idx, :].copy()
    sc = score[..., idx].copy()
    kp[..., NECK, :] = (xy[..., _LEFT_SHOULDER, :] + xy[..., _RIGHT_SHOULDER, :]) / 2
    sc[..., NECK] = np.minimum(score[..., _LEFT_SHOULDER], score[..., _RIGHT_SHOULDER])
    return mark_missing(kp, sc)


def _missing_pose() -> tuple[np.ndarray, np.ndarray]:
    return np.full((NUM_KEYPOINTS, 2), np.nan, np.float32), np.zeros(NUM_KEYPOINTS, np.float32)


def register_calculator_options() -> None:
    """Import the Python option types of every calculator the graphs of this source use. MediaPipe's Python wrapper
    (SolutionBase) hands the expanded graph to C++ through a Python proto, and a node whose options type Python does
    not know silently loses its options there: `mediapipe.solutions.pose` does not import the options of
    RefineLandmarksFromHeatmapCalculator, so without this the stock landmark subgraph refines with the default 9x9
    heatmap window instead of the 7x7 one its graph sets (up to ~3 px at 128 px; found while pruning the model)."""
    from mediapipe.calculators.core import split_vector_calculator_pb2  # noqa: F401
    from mediapipe.calculators.tensor import (image_to_tensor_calculator_pb2, inference_calculator_pb2,  # noqa: F401
                                              tensors_to_floats_calculator_pb2, tensors_to_landmarks_calculator_pb2)
    from mediapipe.calculators.util import refine_landmarks_from_heatmap_calculator_pb2  # noqa: F401


def mediapipe_package() -> tuple[Any, Path]:
    """The imported mediapipe module and its folder; BlazePoseUnavailable (naming what to install) otherwise."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
    try:
        with quiet_native_stderr():
            import mediapipe
    except ImportError as e:
        raise BlazePoseUnavailable(f"the blazepose pose source needs mediapipe ({e}); {INSTALL_HINT}") from None
    folder = Path(mediapipe.__file__).resolve().parent
    version = getattr(mediapipe, "__version__", "unknown")
    missing = [rel for rel in MODEL_FILES.values() if not (folder / rel).is_file()]
    if missing:
        raise BlazePoseUnavailable(f"mediapipe {version} ({folder}) has no bundled BlazePose model ({missing[0]} is "
                                   f"missing); {INSTALL_HINT}")
    try:
        from mediapipe.python.solutions import pose as _pose  # noqa: F401 - the legacy API this source uses
    except ImportError as e:
        raise BlazePoseUnavailable(f"mediapipe {version} lacks the legacy solutions.pose API ({e}); "
                                   f"{INSTALL_HINT}") from None
    register_calculator_options()
    return mediapipe, folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def prune_tflite(model: bytes, outputs: Sequence[str]) -> bytes:
    """A TFLite flatbuffer with only the subgraph outputs named `outputs` (kept in the model's order) and the
    operators they depend on; tensors and weights stay as they are (unused ones are never allocated). The signature
    table is dropped (it names the removed outputs). Uses the TFLite schema bundled with mediapipe and flatbuffers,
    both installed with it."""
    import flatbuffers
    from mediapipe.tasks.metadata import schema_py_generated as schema

    tree = schema.ModelT.InitFromPackedBuf(model, 0)
    if len(tree.subgraphs) != 1:
        raise BlazePoseUnavailable(f"expected a TFLite model with one subgraph, got {len(tree.subgraphs)}")
    graph = tree.subgraphs[0]
    by_name = {graph.tensors[i].name.decode(): i for i in graph.outputs}
    missing = [name for name in outputs if name not in by_name]
    if missing:
        raise BlazePoseUnavailable(f"the BlazePose landmark model has no output {missing[0]!r} (outputs: "
                                   f"{sorted(by_name)}); {INSTALL_HINT}")
    keep_outputs = [i for i in graph.outputs if graph.tensors[i].name.decode() in outputs]
    producer = {t: k for k, op in enumerate(graph.operators) for t in op.outputs}
    needed: set[int] = set()
    stack = list(keep_outputs)
    while stack:
        k = producer.get(stack.pop())
        if k is not None and k not in needed:
            needed.add(k)
            stack.extend(t for t in graph.operators[k].inputs if t >= 0)
    graph.operators = [op for k, op in enumerate(graph.operators) if k in needed]
    graph.outputs = keep_outputs
    tree.signatureDefs = None
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def pruned_landmark_model(full_model: Path, sha256: str) -> Path:
    """The bundled landmark model pruned to LANDMARK_OUTPUTS, written once per machine into the temp folder
    (named by the bundled model's hash, written atomically) and reused by every process after."""
    path = Path(tempfile.gettempdir()) / f"posecrop-blazepose-{sha256[:16]}-{'-'.join(LANDMARK_OUTPUTS)}.tflite"
    if not path.is_file():
        data = prune_tflite(full_model.read_bytes(), LANDMARK_OUTPUTS)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:  # write then rename: processes starting together never see half a model
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)  # readable by every user of the machine, like the bundled model
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return path


def stock_roi_graph() -> Any:
    """MediaPipe's PoseLandmarkByRoiCpu subgraph on the full bundled model (what the pruned graph must equal), its
    node options intact (register_calculator_options)."""
    register_calculator_options()
    from google.protobuf import text_format
    from mediapipe.framework import calculator_pb2
    from mediapipe.python.solution_base import SolutionBase

    with quiet_native_stderr():
        config = text_format.Parse(_STOCK_ROI_GRAPH, calculator_pb2.CalculatorGraphConfig())
        return SolutionBase(graph_config=config, side_inputs={"model_complexity": 1})


def _pruned_roi_graph(model_path: Path) -> Any:
    import json

    from google.protobuf import text_format
    from mediapipe.framework import calculator_pb2
    from mediapipe.python.solution_base import SolutionBase

    text = _PRUNED_ROI_GRAPH.replace("MODEL_PATH", json.dumps(str(model_path)))
    return SolutionBase(graph_config=text_format.Parse(text, calculator_pb2.CalculatorGraphConfig()))


class BlazePoseSource:
    """PoseSource running MediaPipe BlazePose on each image (see the module docstring)."""

    name = "blazepose"
    needs_pixels = True
    in_worker = True  # CPU-bound and per image: the crop stage runs it in its worker processes

    def __init__(self, mode: str = "roi", roi_scale: float = 1.25, pad: float = 0.0, upscale: float = 1.0,
                 min_detection_confidence: float = 0.5) -> None:
        if mode not in MODES:
            raise ValueError(f"blazepose mode must be one of {MODES}, got {mode!r}")
        if not 0.5 <= float(roi_scale) <= 4.0:
            raise ValueError(f"blazepose roi_scale must be in [0.5, 4] (side of the square region / image height), "
                             f"got {roi_scale}")
        if not 0.0 <= float(pad) <= 2.0:
            raise ValueError(f"blazepose pad must be in [0, 2] (fraction of the width added on each side), got {pad}")
        if not 0.25 <= float(upscale) <= 8.0:
            raise ValueError(f"blazepose upscale must be in [0.25, 8], got {upscale}")
        if not 0.0 <= float(min_detection_confidence) <= 1.0:
            raise ValueError(f"blazepose min_detection_confidence must be in [0, 1], got {min_detection_confidence}")
        self.mode = mode
        self.roi_scale = float(roi_scale)
        self.pad = float(pad)
        self.upscale = float(upscale)
        self.min_detection_confidence = float(min_detection_confidence)
        mediapipe, folder = mediapipe_package()
        self.mediapipe_version = getattr(mediapipe, "__version__", "unknown")
        self.model_files = {key: folder / rel for key, rel in MODEL_FILES.items()}
        self.model_sha256 = {key: _sha256(path) for key, path in self.model_files.items()}
        self._model: Any = None

    # ---------------------------------------------------------------------------------------- pickling

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_model"] = None  # a MediaPipe graph does not pickle; each process makes its own
        return state

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None

    # ---------------------------------------------------------------------------------------- model

    def _graph(self) -> Any:
        if self._model is None:
            with quiet_native_stderr():
                self._model = self._new_graph()
        return self._model

    def _new_graph(self) -> Any:
        register_calculator_options()  # also in a worker process, which gets this source unpickled
        if self.mode == "detector":
            import warnings

            from mediapipe.python.solutions.pose import Pose

            with warnings.catch_warnings():  # protobuf's "label() is deprecated", inside mediapipe
                warnings.simplefilter("ignore", DeprecationWarning)
                return Pose(static_image_mode=True, model_complexity=1,
                            min_detection_confidence=self.min_detection_confidence)
        try:
            model = pruned_landmark_model(self.model_files["landmark"], self.model_sha256["landmark"])
        except OSError as e:  # no writable temp folder: the stock subgraph gives the same landmarks, slower
            import warnings

            warnings.warn(f"blazepose: cannot write the pruned landmark model ({e}); using MediaPipe's stock "
                          "landmark subgraph (same landmarks, about twice the CPU)", RuntimeWarning, stacklevel=2)
            return stock_roi_graph()
        return _pruned_roi_graph(model)

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """The 33 landmarks (33, 3) as (x, y, visibility) normalised to `image` (H x W x 3 uint8 RGB), after the
        padding / upscaling of this source are undone; None when the model finds no person."""
        import cv2

        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {getattr(image, 'shape', type(image))} "
                             f"{getattr(image, 'dtype', '')}")
        height, width = image.shape[:2]
        pad = int(round(self.pad * width))
        x = np.ascontiguousarray(image)
        if pad:
            x = cv2.copyMakeBorder(x, 0, 0, pad, pad, cv2.BORDER_REPLICATE)
        if self.upscale != 1.0:
            x = cv2.resize(x, None, fx=self.upscale, fy=self.upscale,
                           interpolation=cv2.INTER_LINEAR if self.upscale > 1 else cv2.INTER_AREA)
        first = self._model is None
        graph = self._graph()
        if self.mode == "detector":
            inputs: Any = x
        else:
            from mediapipe.framework.formats import rect_pb2

            h, w = x.shape[:2]
            inputs = {"image": x, "roi": rect_pb2.NormalizedRect(x_center=0.5, y_center=0.5, rotation=0.0,
                                                                 width=self.roi_scale * h / w, height=self.roi_scale)}
        with quiet_native_stderr() if first else contextlib.nullcontext():
            out = graph.process(inputs)
        if self.mode == "detector":
            found = out.pose_landmarks
        else:
            presence = getattr(out, "presence", 1.0)  # the stock subgraph (fallback) gates by itself
            found = out.landmarks if presence is not None and presence > PRESENCE_THRESHOLD else None
        if found is None:
            return None
        lm = np.array([[p.x, p.y, p.visibility] for p in found.landmark], np.float32)
        if lm.shape != (NUM_LANDMARKS, 3):
            raise PoseReadError(f"BlazePose returned {len(lm)} landmarks, expected {NUM_LANDMARKS}")
        # normalised to the padded frame -> normalised to the source image (scaling cancels out)
        total = width + 2 * pad
        lm[:, 0] = (lm[:, 0] * total - pad) / width
        return lm

    # ---------------------------------------------------------------------------------------- PoseSource

    def describe(self) -> dict:
        files = {key: {"file": str(path), "sha256": self.model_sha256[key]} for key, path in self.model_files.items()}
        used = ("landmark", "detector") if self.mode == "detector" else ("landmark",)
        return {
            "backend": self.name,
            "mediapipe_version": self.mediapipe_version,
            "model": f"BlazePose GHUM full (model_complexity 1), mode {self.mode}",
            "model_files": {key: files[key] for key in used},
            "landmark_outputs": (list(LANDMARK_OUTPUTS) if self.mode == "roi" else "all (mp.solutions.pose)"),
            "checkpoint_sha256": self.model_sha256["landmark"],
            "config": self.options_text(),  # compared when a cache is resumed, with backend, model and the hash
            "mode": self.mode,
            "roi_scale": self.roi_scale if self.mode == "roi" else None,
            "min_detection_confidence": self.min_detection_confidence if self.mode == "detector" else None,
            "pad": self.pad,
            "upscale": self.upscale,
            "keypoints": "33 landmarks -> COCO-18 (neck = shoulder midpoint, score = min shoulder visibility); "
                         "score = visibility; outside the image = missing",
            "person_box": "whole image" if self.mode == "roi" else "BlazePose person detector",
        }

    def options_text(self) -> str:
        person = (f"roi_scale={self.roi_scale:g}" if self.mode == "roi"
                  else f"min_detection_confidence={self.min_detection_confidence:g}")
        # heatmap_kernel: the 7x7 refinement window MediaPipe's graph sets (register_calculator_options); caches
        # written before it was honoured (9x9) have no such entry and are not resumed with this one
        return f"mode={self.mode} {person} pad={self.pad:g} upscale={self.upscale:g} heatmap_kernel=7"

    def estimate(self, batch: Sequence[PoseBatchItem]) -> tuple[np.ndarray, np.ndarray]:
        kps = np.empty((len(batch), NUM_KEYPOINTS, 2), np.float32)
        scores = np.empty((len(batch), NUM_KEYPOINTS), np.float32)
        for i, item in enumerate(batch):
            height, width = item.image.shape[:2]
            try:
                lm = self.landmarks(item.image)
            except (RuntimeError, ValueError) as e:
                raise PoseReadError(f"{item.record.path}: BlazePose failed on this image ({e})") from e
            kps[i], scores[i] = _missing_pose() if lm is None else landmarks_to_coco18(lm, width, height)
        return kps, scores
