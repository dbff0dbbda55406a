"""Data pipeline over the Parquet crop cache: split tables, crop decoding + augmentation, samplers, loaders.

- Only the columns a model needs are read (`input_columns` of the model's `inputs`): the five region crops,
  or `whole` for `baseline` and the whole-image models (the unaligned source image resized to the input size).
- JPEG bytes stay in Arrow memory (zero-copy numpy views, shared by forked workers) and are decoded in
  `__getitem__` with OpenCV, so loading scales with DataLoader workers.
- crops="recrop" (the training default): instead of the five stored crops, the source image (`whole`) and the
  Eq. 1-2 boxes are read, and `__getitem__` cuts the crops with the crop stage's own `crop_regions`, straight at
  the input sizes - the stored crops without their JPEG loss, for about half the decoding on Market-size images.
  With a `beta` (TrainConfig.beta), the boxes are first recomputed from the stored keypoints at that overlap
  (posecrop.rebox): a Table 11 sweep trains every beta from one crop cache.
- Augmentation: one horizontal-flip decision (and one albumentations colour jitter) per sample, identical for
  all five crops; padding-crop and random erasing per crop, fused with the flip into one copy per crop that
  writes the CHW layout directly (`reidtrain.augment`).
  Every random draw of a sample comes from a seed the sampler hands out with its index, so a sample's
  augmentation depends on (seed, epoch, position) only - not on worker count or process - which makes seeded
  runs and `--resume` reproducible.
- Workers return uint8 CHW tensors (4x less inter-process traffic than float); `normalize_inputs` turns them
  into floats on the training device: by default minus the channel means of the sample's whole-body image
  (Sec. 4.1: "normalized by subtracting its channel means"), the same means for its four part crops.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import albumentations as A
import cv2
import numpy as np
import pyarrow as pa
import torch

from reidkit.typedconfig import ConfigError
from torch.utils.data import DataLoader, Dataset, Sampler

from posecrop.cache_reader import CacheError, cache_settings, read_split
from posecrop.crops import BOX_FRAME, FILL_MODES, ImageDecodeError, crop_regions, decode_image
from posecrop.regions import REGION_NAMES
from posecrop.schema import WHOLE_COLUMN

from .allocator import keep_freed_memory
from .augment import CropDraw, augment_crop, draw_erase_box, draw_shift, to_chw
from .config import AugmentConfig

IDENTITY_COLUMNS = ("image_id", "dataset", "pid", "camid")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


class CacheReadError(CacheError):
    """A cache row cannot be used (no bytes, undecodable image); the message names the image and column."""


def input_columns(inputs: Mapping[str, Any] | str) -> dict[str, str]:
    """Model input key -> cache column, from a model's `inputs` (key -> InputSpec) or a registered model's name."""
    if isinstance(inputs, str):
        from .model.registry import get_model
        inputs = get_model(inputs).defaults.inputs
    return {k: spec.column for k, spec in inputs.items()}


def input_sizes(inputs: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Model input key -> (height, width) it is resized to, from a model's `inputs` (key -> InputSpec)."""
    return {k: (int(spec.size[0]), int(spec.size[1])) for k, spec in inputs.items()}


# ----------------------------------------------------------------------------------------------- split tables
def read_split_table(cache: Path, split: str, columns: Sequence[str]) -> pa.Table:
    """Read `columns` of one split (posecrop.cache.read_split), ordered by image_id (stable across runs)."""
    table = read_split(Path(cache), split, list(columns))
    if table.num_rows == 0:
        from posecrop.cache_reader import empty_split_reason
        raise CacheReadError(f"{cache}/{split}: the split has no rows: {empty_split_reason(cache, split)}")
    return table.sort_by("image_id")


class _BinaryColumn:
    """Zero-copy random access to the `bytes` of an image-struct column (numpy views over the Arrow buffers)."""

    def __init__(self, column: pa.ChunkedArray, name: str, image_ids: Sequence[str]) -> None:
        self.offsets: list[np.ndarray] = []
        self.data: list[np.ndarray] = []
        starts = [0]
        for chunk in column.chunks:
            values = chunk.field("bytes") if pa.types.is_struct(chunk.type) else chunk
            if values.null_count or chunk.null_count:
                bad = np.flatnonzero(np.asarray(values.is_null().to_numpy(zero_copy_only=False)))
                row = starts[-1] + int(bad[0]) if len(bad) else starts[-1]
                raise CacheReadError(f"column {name!r}: no image bytes for {image_ids[row]!r}")
            if pa.types.is_large_binary(values.type):
                off_type = np.int64
            else:
                values = values.cast(pa.binary())
                off_type = np.int32
            buffers = values.buffers()
            offsets = np.frombuffer(buffers[1], dtype=off_type)[values.offset: values.offset + len(values) + 1]
            data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
            self.offsets.append(offsets)
            self.data.append(data)
            starts.append(starts[-1] + len(values))
        self.starts = np.asarray(starts, dtype=np.int64)
        self._keepalive = column

    def __getitem__(self, i: int) -> np.ndarray:
        c = int(np.searchsorted(self.starts, i, side="right")) - 1
        j = i - int(self.starts[c])
        off = self.offsets[c]
        return self.data[c][int(off[j]): int(off[j + 1])]


@dataclass
class Recrop:
    """The five region crops cut by the loader from the cached source image (`whole`) and Eq. 1-2 boxes."""

    whole: _BinaryColumn
    boxes: np.ndarray            # (N, 5, 4) float32 in the crop stage's box frame, REGION_NAMES order
    fill: str                    # the crop stage's fill mode for box parts outside the image
    regions: dict[str, int]      # model input key -> row of `boxes`


@dataclass
class SplitData:
    """One split of a cache in memory: identities plus the encoded image bytes of the needed columns (or, to
    re-cut the crops, the source images and boxes)."""

    cache: Path
    split: str
    image_ids: list[str]
    pids: np.ndarray
    camids: np.ndarray
    dataset: str
    images: dict[str, _BinaryColumn]   # model input key -> encoded bytes (empty when recrop is set)
    recrop: Recrop | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def keys(self) -> list[str]:
        """The model input keys this split provides."""
        return list(self.recrop.regions) if self.recrop is not None else list(self.images)

    def encoded(self, key: str, index: int) -> np.ndarray:
        return self.images[key][index]


def _recrop_settings(cache: Path) -> str:
    """The fill mode of a cache whose boxes can be re-cut (the crop stage's box frame); else a clear error."""
    settings = cache_settings(cache)
    if settings.get("box_frame") != BOX_FRAME:
        raise CacheReadError(f"{cache}: its boxes are not recorded in the crop frame ({BOX_FRAME!r}), so the "
                             f"crops cannot be re-cut from the source images; re-run `crop`, or train with "
                             f"crops = 'stored'")
    fill = settings.get("fill", "mean")
    if fill not in FILL_MODES:
        raise CacheReadError(f"{cache}: unknown fill mode {fill!r} in the cache metadata")
    return fill


def _boxes_at_beta(cache: Path, split: str, table: pa.Table, image_ids: list[str], beta: float) -> np.ndarray:
    """The Eq. 1-2 boxes of every row recomputed from its stored keypoints at `beta` (posecrop.rebox)."""
    from posecrop.rebox import ReboxError, boxes_at_beta, region_spec_of, region_width_of

    column = table.column("keypoints").combine_chunks()
    if column.null_count:
        bad = int(np.flatnonzero(np.asarray(column.is_null().to_numpy(zero_copy_only=False)))[0])
        raise CacheReadError(f"{cache}/{split}: no keypoints for {image_ids[bad]!r}, so its regions cannot be "
                             f"placed at beta {beta}")
    kp = np.asarray(column.flatten().flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    kp = kp.reshape(len(image_ids), -1, 2)
    widths = table.column("width").to_numpy(zero_copy_only=False)
    try:
        settings = cache_settings(cache)
        spec, width = region_spec_of(settings), region_width_of(settings)
        return boxes_at_beta(kp, widths, beta, spec, width)
    except ReboxError as e:
        raise CacheReadError(f"{cache}/{split}: the regions cannot be placed at beta {beta}: {e}") from e


def load_split(cache: Path, split: str, columns: dict[str, str], crops: str = "stored",
               beta: float | None = None) -> SplitData:
    """Read one split with only the identity columns and the image columns in `columns` (key -> column).

    crops="recrop": when every column is a region crop, read the source images (`whole`) and the boxes instead,
    and let the dataset cut the crops (see `Recrop`); "stored": the stored crops.
    beta: None - the cache's boxes; a fraction of H - the boxes recomputed from the stored (repaired) keypoints at
    that overlap (Table 11 without re-cropping; needs crops="recrop" and region-crop inputs)."""
    if crops not in ("recrop", "stored"):
        raise ConfigError(f"crops must be 'recrop' or 'stored', got {crops!r}")
    recrop = crops == "recrop" and all(c in REGION_NAMES for c in columns.values())
    if beta is not None and not recrop:
        raise ConfigError(f"beta = {beta}: the regions can only be re-placed when the loader cuts the region crops "
                          f"(crops = 'recrop' and a model that reads the five region crops; got crops = {crops!r}, "
                          f"columns {sorted(set(columns.values()))})")
    fill = _recrop_settings(Path(cache)) if recrop else ""
    image_cols = [WHOLE_COLUMN, "boxes"] if recrop else list(columns.values())
    if beta is not None:
        image_cols += ["keypoints", "width"]
    wanted = list(dict.fromkeys([*IDENTITY_COLUMNS, *image_cols]))
    table = read_split_table(Path(cache), split, wanted)
    image_ids = table.column("image_id").to_pylist()
    datasets = set(table.column("dataset").unique().to_pylist())
    images, source = {}, None
    if recrop:
        boxes = table.column("boxes").combine_chunks()
        if boxes.null_count:
            bad = int(np.flatnonzero(np.asarray(boxes.is_null().to_numpy(zero_copy_only=False)))[0])
            raise CacheReadError(f"{cache}/{split}: no boxes for {image_ids[bad]!r}")
        flat = np.asarray(boxes.flatten().flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        flat = flat.reshape(len(image_ids), len(REGION_NAMES), 4)
        if beta is not None:
            flat = _boxes_at_beta(Path(cache), split, table, image_ids, beta)
        source = Recrop(whole=_BinaryColumn(table.column(WHOLE_COLUMN), WHOLE_COLUMN, image_ids),
                        boxes=flat, fill=fill,
                        regions={key: REGION_NAMES.index(col) for key, col in columns.items()})
    else:
        images = {key: _BinaryColumn(table.column(col), col, image_ids) for key, col in columns.items()}
    return SplitData(cache=Path(cache), split=split, image_ids=image_ids,
                     pids=table.column("pid").to_numpy().astype(np.int64),
                     camids=table.column("camid").to_numpy().astype(np.int64),
                     dataset=",".join(sorted(str(d) for d in datasets)), images=images, recrop=source)


def relabel(pids: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Train identities -> class labels 0..q-1 (sorted original pids); returns (labels, the original pids)."""
    uniq = np.unique(pids)
    return np.searchsorted(uniq, pids).astype(np.int64), [int(p) for p in uniq]


# ------------------------------------------------------------------------------------------------- transforms
def decode(encoded: np.ndarray, where: str) -> np.ndarray:
    """JPEG/PNG bytes -> HxWx3 uint8 RGB; CacheReadError naming `where` for empty or undecodable bytes."""
    if len(encoded) == 0:  # cv2.imdecode raises cv2.error on an empty buffer
        raise CacheReadError(f"{where}: empty image bytes (0 bytes stored)")
    if _IMREAD_RGB is not None:
        img = cv2.imdecode(encoded, _IMREAD_RGB)
    else:
        img = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img is not None else None
    if img is None:
        raise CacheReadError(f"{where}: image bytes cannot be decoded ({len(encoded)} bytes)")
    return img


class SampleTransform:
    """Resize each input to its size and hand it out as C x H x W uint8; with `augment`, the training
    augmentation.

    shared (one decision per sample, the same for every crop): horizontal flip, and colour jitter (an
    albumentations call over all crops, the parts as additional image targets).
    per crop: padding-crop and random erasing, drawn one crop after the other from the sample's generator.
    Flip, padding-crop and erasing are fused into one copy per crop (`reidtrain.augment`; the semantics of
    albumentations' HorizontalFlip -> PadIfNeeded -> RandomCrop -> Erasing(fill="random")).
    All draws come from generators seeded by the sample seed: the same (index, seed) gives the same images.
    """

    def __init__(self, sizes: dict[str, tuple[int, int]], augment: AugmentConfig | None = None) -> None:
        self.sizes = {k: (int(v[0]), int(v[1])) for k, v in sizes.items()}
        self.augment = augment
        self.photometric: A.Compose | None = None
        self.pads: dict[str, tuple[int, int]] = {}
        if augment is None:
            return
        keys = list(self.sizes)
        if augment.color_jitter > 0:
            self.photometric = A.Compose(
                [A.ColorJitter(brightness=0.2, contrast=0.15, saturation=0.15, hue=0.0, p=augment.color_jitter)],
                additional_targets={k: "image" for k in keys[1:]}, is_check_shapes=False)
        body_h, body_w = self.sizes.get("body", self.sizes[keys[0]])
        self.pads = {key: (round(augment.pad * h / body_h), round(augment.pad * w / body_w))
                     for key, (h, w) in self.sizes.items()}

    def resized(self, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each image at its input size (H x W x 3)."""
        out = {}
        for key, img in images.items():
            h, w = self.sizes[key]
            out[key] = img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        return out

    def __call__(self, images: dict[str, np.ndarray], seed: int | None) -> dict[str, np.ndarray]:
        out = self.resized(images)
        aug = self.augment
        if aug is None or seed is None:
            return {key: to_chw(img) for key, img in out.items()}
        rng = np.random.default_rng(seed)
        keys = list(out)
        flip = bool(aug.flip) and bool(rng.random() < 0.5)
        if self.photometric is not None:
            self.photometric.set_random_state(rng, random.Random(seed))
            res = self.photometric(image=out[keys[0]], **{k: out[k] for k in keys[1:]})
            out = {keys[0]: res["image"], **{k: res[k] for k in keys[1:]}}
        result = {}
        for key in keys:
            img = out[key]
            dy, dx = draw_shift(rng, *self.pads[key])
            box = None
            if aug.erasing > 0 and rng.random() < aug.erasing:
                box = draw_erase_box(rng, *img.shape[:2])
            result[key] = augment_crop(img, flip, CropDraw(dy, dx, box), rng)
        return result


def _unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> a new float32 tensor in [0, 1]. The later steps run in place on it: on a CPU each fresh
    batch-sized float tensor costs page faults, which made the out-of-place chain 2-5x slower."""
    return x.float().mul_(1.0 / 255.0) if not x.is_floating_point() else x / 255.0


def normalize_batch(x: torch.Tensor, mode: str = "channel-mean", mean: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [0, 1] minus the channel means (Sec. 4.1), or ImageNet mean/std.

    channel-mean: `mean` (B, 3, 1, 1) when given (see `normalize_inputs`), else each image's own means."""
    if mode not in ("channel-mean", "imagenet"):
        raise ValueError(f"unknown normalisation {mode!r} (channel-mean or imagenet)")
    x = _unit(x)
    if mode == "channel-mean":
        return x.sub_(x.mean(dim=(2, 3), keepdim=True) if mean is None else mean)
    m = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return x.sub_(m).div_(std)


def normalize_inputs(inputs: dict[str, torch.Tensor], mode: str = "channel-mean") -> dict[str, torch.Tensor]:
    """Normalise the uint8 inputs of a batch of samples. channel-mean: every input minus the channel means of
    the sample's whole-body input ("body": the body crop, or the whole box for baseline) - the means of the
    person image (Sec. 4.1). Each part keeps its colour relative to the body: subtracting a part crop's own
    means would erase the colour of the clothes it shows."""
    if mode != "channel-mean":
        return {k: normalize_batch(v, mode) for k, v in inputs.items()}
    ref_key = "body" if "body" in inputs else next(iter(inputs))
    ref = _unit(inputs[ref_key])
    mean = ref.mean(dim=(2, 3), keepdim=True)
    return {k: ref.sub_(mean) if k == ref_key else normalize_batch(v, mode, mean) for k, v in inputs.items()}


# ---------------------------------------------------------------------------------------------------- dataset
class ReidDataset(Dataset):
    """Samples of one split: {"inputs": {key: uint8 CHW}, "label", "pid", "camid", "index"}.

    Indexed by an int (no augmentation randomness) or by (index, seed) as the training samplers yield.
    `labels` are the class labels (train split); -1 where not given.
    """

    def __init__(self, data: SplitData, transform: SampleTransform, labels: np.ndarray | None = None) -> None:
        self.data = data
        self.transform = transform
        self.labels = labels if labels is not None else np.full(len(data), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.data)

    def load(self, index: int) -> dict[str, np.ndarray]:
        """The decoded images of one sample: the stored crops as stored, or crops re-cut from the source image
        at the input sizes."""
        where = f"{self.data.cache}/{self.data.split} image {self.data.image_ids[index]!r}"
        rc = self.data.recrop
        if rc is None:
            return {key: decode(self.data.encoded(key, index), f"{where} column {key!r}") for key in self.data.images}
        try:
            source = decode_image(rc.whole[index].tobytes(), f"{where} column {WHOLE_COLUMN!r}").pixels
        except ImageDecodeError as e:
            raise CacheReadError(str(e)) from e
        keys = list(rc.regions)
        try:
            crops = crop_regions(source, rc.boxes[index, [rc.regions[k] for k in keys]],
                                 [self.transform.sizes[k] for k in keys], rc.fill)  # type: ignore[arg-type]
        except (ValueError, cv2.error) as e:
            raise CacheReadError(f"{where}: the crops cannot be cut from its boxes ({e})") from e
        return dict(zip(keys, crops))

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, seed = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (int(item), None)
        images = self.transform(self.load(index), seed)
        return {"inputs": {k: torch.from_numpy(v) for k, v in images.items()},
                "label": int(self.labels[index]), "pid": int(self.data.pids[index]),
                "camid": int(self.data.camids[index]), "index": index}


# --------------------------------------------------------------------------------------------------- samplers
class EpochSampler(Sampler):
    """The training order of one epoch, a pure function of (seed, epoch), sharded over `world_size` ranks.

    mode "random": a permutation of all samples. mode "identity": P x K identity-balanced batches (P =
    batch_size / K identities, K = instances_per_id images each; identities with fewer images are sampled with
    replacement). Yields (index, sample_seed): the seed drives that sample's augmentation. All ranks draw the
    same global order and take disjoint shares of equal length (random: every world_size-th sample; identity:
    whole batches), so DDP ranks never wait on each other.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, mode: str = "random", instances_per_id: int = 4,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if mode not in ("random", "identity"):
            raise ConfigError(f"sampler mode must be 'random' or 'identity', got {mode!r}")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size, self.mode, self.k = batch_size, mode, instances_per_id
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None
        if mode == "identity":
            p = batch_size // instances_per_id
            if len(np.unique(self.labels)) < p:
                raise ConfigError(f"identity sampler: {p} identities per batch but only "
                                 f"{len(np.unique(self.labels))} identities in the training split")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _identity_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        """P x K batches over the whole split: each identity's images shuffled into chunks of K, then P
        identities with chunks left drawn at random per batch (as torchreid's RandomIdentitySampler)."""
        k, p = self.k, self.batch_size // self.k
        chunks: dict[int, list[np.ndarray]] = {}
        for lab in np.unique(self.labels):
            idx = np.flatnonzero(self.labels == lab)
            idx = rng.permutation(idx) if len(idx) >= k else rng.choice(idx, size=k, replace=True)
            n = len(idx) // k
            chunks[int(lab)] = list(idx[: n * k].reshape(n, k))
        batches = []
        while True:
            available = [lab for lab, c in chunks.items() if c]
            if len(available) < p:
                return batches
            chosen = rng.choice(available, size=p, replace=False)
            batches.append(np.concatenate([chunks[int(lab)].pop() for lab in chosen]))

    def order(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, sample seeds) of this rank for the current epoch."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1], self._cache[2]
        rng = np.random.default_rng([self.seed, self.epoch])
        ws, bs = self.world_size, self.batch_size
        if self.mode == "random":
            glob = rng.permutation(len(self.labels))
            pos = np.arange(self.rank, len(glob) // ws * ws, ws)
        else:
            batches = self._identity_batches(rng)
            n = len(batches) // ws * ws
            if n == 0:
                raise ConfigError(f"identity sampler: too few images for one {bs}-image batch per rank")
            glob = np.concatenate(batches[:n])
            pos = ((np.arange(self.rank, n, ws) * bs)[:, None] + np.arange(bs)).reshape(-1)
        seeds = rng.integers(0, 2**62, size=len(glob))
        self._cache = (self.epoch, glob[pos], seeds[pos])
        return self._cache[1], self._cache[2]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        idx, seeds = self.order()
        return iter(zip(idx.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return len(self.order()[0])


def _worker_init(_: int) -> None:
    keep_freed_memory()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_loader(dataset: ReidDataset, batch_size: int, workers: int, sampler: Sampler | None = None,
                train: bool = False, pin_memory: bool = False) -> DataLoader:
    """DataLoader with uint8 batches. Training drops the last incomplete batch (a batch of one breaks batch norm)
    when there is at least one full batch; a split smaller than one batch is trained as one partial batch (never
    an epoch of no steps)."""
    samples = len(sampler) if sampler is not None else len(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      drop_last=train and samples >= batch_size, pin_memory=pin_memory, persistent_workers=workers > 0,
                      worker_init_fn=_worker_init if workers > 0 else None,
                      generator=torch.Generator().manual_seed(0),  # keeps the loader off the global RNG
                      prefetch_factor=4 if workers > 0 else None)
