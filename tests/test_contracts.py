"""The shared contracts: keypoint layout and conversions, typed configs, atomic writes, cache schema."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pytest

from posecrop import keypoints as K
from posecrop.regions import REGION_NAMES, RegionSpec
from posecrop.schema import IMAGE_COLUMNS, cache_schema, read_settings
from reidkit.atomic import atomic_path, atomic_write_text, is_temporary
from reidkit.typedconfig import ConfigError, from_mapping, merge, to_dict

REPO = Path(__file__).resolve().parents[1]


def test_coco18_order_matches_design():
    assert K.KEYPOINT_NAMES[:2] == ("nose", "neck")
    assert K.KEYPOINT_NAMES[14:] == ("r_eye", "l_eye", "r_ear", "l_ear")
    assert K.NUM_KEYPOINTS == 18


def test_flip_permutation_swaps_sides_and_is_an_involution():
    perm = np.array(K.FLIP_PERMUTATION)
    assert (perm[perm] == np.arange(18)).all()
    assert K.KEYPOINT_NAMES[perm[K.KEYPOINT_INDEX["r_wrist"]]] == "l_wrist"
    assert perm[K.KEYPOINT_INDEX["neck"]] == K.KEYPOINT_INDEX["neck"]


def test_coco17_to_coco18_neck_and_order():
    rng = np.random.default_rng(0)
    kp17 = rng.uniform(0, 100, (3, 17, 2)).astype(np.float32)
    sc17 = rng.uniform(0, 1, (3, 17)).astype(np.float32)
    kp18, sc18 = K.coco17_to_coco18(kp17, sc17)
    assert kp18.shape == (3, 18, 2) and sc18.shape == (3, 18)
    ls, rs = K.COCO17_NAMES.index("l_shoulder"), K.COCO17_NAMES.index("r_shoulder")
    np.testing.assert_allclose(kp18[:, 1], (kp17[:, ls] + kp17[:, rs]) / 2)
    np.testing.assert_allclose(sc18[:, 1], np.minimum(sc17[:, ls], sc17[:, rs]))
    for name in K.KEYPOINT_NAMES:
        if name != "neck":
            np.testing.assert_array_equal(kp18[:, K.KEYPOINT_INDEX[name]], kp17[:, K.COCO17_NAMES.index(name)])
    with pytest.raises(ValueError, match="COCO-17"):
        K.coco17_to_coco18(kp17[:, :16], sc17[:, :16])


def test_body25_to_coco18_drops_midhip_and_feet():
    kp = np.arange(25 * 2, dtype=np.float32).reshape(25, 2)
    sc = np.arange(25, dtype=np.float32)
    kp18, sc18 = K.body25_to_coco18(kp, sc)
    assert list(sc18) == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]


def test_mark_missing_normalises_openpose_zeros_and_nan():
    kp = np.array([[10, 20], [0, 0], [np.nan, 5]] + [[1, 1]] * 15, dtype=np.float32)
    sc = np.array([0.9, 0.0, 0.8] + [0.5] * 15, dtype=np.float32)
    kp2, sc2 = K.mark_missing(kp, sc)
    assert np.isnan(kp2[1]).all() and sc2[1] == 0
    assert np.isnan(kp2[2]).all() and sc2[2] == 0
    assert (kp2[0] == [10, 20]).all() and sc2[0] == pytest.approx(0.9)


def test_region_spec_validates_joint_names():
    assert RegionSpec().masks().shape == (5, 18)
    bad = dict(RegionSpec().joints, head=("nose", "third_eye"))
    with pytest.raises(ValueError, match="third_eye"):
        RegionSpec(joints=bad)


@dataclasses.dataclass
class Inner:
    size: tuple[int, int] = (96, 192)


@dataclasses.dataclass
class Cfg:
    name: str = "x"
    lam: float = 0.5
    epochs: int = 100
    mode: Literal["a", "b"] = "a"
    out: Path | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_typedconfig_fills_and_rejects_naming_the_key():
    cfg = from_mapping(Cfg, {"lam": 1, "inner": {"size": [32, 64]}, "out": "runs/x"})
    assert cfg.lam == 1.0 and cfg.inner.size == (32, 64) and cfg.out == Path("runs/x")
    with pytest.raises(ConfigError, match="'lamda'"):
        from_mapping(Cfg, {"lamda": 0.1})
    with pytest.raises(ConfigError, match="epochs"):
        from_mapping(Cfg, {"epochs": "ten"})
    with pytest.raises(ConfigError, match="inner.size"):
        from_mapping(Cfg, {"inner": {"size": [1, 2, 3]}})
    with pytest.raises(ConfigError, match="mode"):
        from_mapping(Cfg, {"mode": "c"})
    with pytest.raises(ConfigError, match="epochs"):
        from_mapping(Cfg, {"epochs": True})
    assert merge(cfg, {"epochs": 3, "lam": None}).epochs == 3 and merge(cfg, {"lam": None}).lam == 1.0
    assert json.loads(json.dumps(to_dict(cfg)))["inner"]["size"] == [32, 64]


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "done")
    assert target.read_text() == "done"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "done"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]
    assert is_temporary(Path(".file.txt.abc.tmp")) and not is_temporary(target)


def test_cache_schema_metadata_round_trip(tmp_path):
    import pyarrow.parquet as pq

    schema = cache_schema({"beta": 0.1})
    assert list(IMAGE_COLUMNS) == ["whole", *REGION_NAMES]
    hf = json.loads(schema.metadata[b"huggingface"])
    assert all(hf["info"]["features"][c] == {"_type": "Image"} for c in IMAGE_COLUMNS)
    table = pa.Table.from_pylist([], schema=schema)
    pq.write_table(table, tmp_path / "p.parquet")
    back = pq.read_schema(tmp_path / "p.parquet")
    assert read_settings(back)["beta"] == 0.1 and read_settings(back)["format_version"] == 1


COMMANDS = ("synth", "crop", "info", "show", "canonical", "model-info", "train", "evaluate", "extract", "export",
            "run", "demo", "bench")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"})


def test_cli_help_lists_every_command_with_a_description():
    out = _cli("--help")
    assert out.returncode == 0, out.stderr
    listed = {line.split()[1] for line in out.stdout.splitlines() if line.startswith("│ ") and len(line.split()) > 2}
    assert set(COMMANDS) <= listed, set(COMMANDS) - listed


@pytest.mark.parametrize("command", ["synth", "crop", "model-info", "train", "evaluate", "run", "bench",
                                     "canonical fit"])
def test_each_command_help_shows_defaults(command):
    out = _cli(*command.split(), "--help")
    assert out.returncode == 0, out.stderr
    assert "[default:" in out.stdout, out.stdout


def test_atomic_write_gives_normal_file_mode(tmp_path):
    target = tmp_path / "report.png"
    atomic_write_text(target, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_pause_points_parse_and_refuse_naming_the_variable():
    from reidkit.pause import ENV, PauseSpecError, parse

    assert parse("part-written:3, part-temp") == {"part-written": 3, "part-temp": 1}
    for bad in ("part-written:0", "nowhere:2", "part-temp:x"):
        with pytest.raises(PauseSpecError, match=ENV):
            parse(bad)
