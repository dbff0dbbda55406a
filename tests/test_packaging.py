"""The wheel: the two stages, reidkit and pipelines with its recipes; no top-level `cli` or `benchmarks` module;
the `posecrop-reid` script runs pipelines.app:main. Built from this checkout with the installed setuptools."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True)
    if files.returncode != 0:
        pytest.skip("not a git checkout")
    for rel in files.stdout.split():  # a clean copy: no build/ or *.egg-info left in the checkout
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((REPO / rel).read_bytes())
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return zipfile.ZipFile(next(out.glob("posecrop_reid-*.whl")))


def test_the_wheel_installs_the_packages_and_the_recipes_only(wheel):
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"posecrop", "reidtrain", "reidkit", "pipelines"}   # no cli.py, benchmarks/ or tests/
    recipes = {Path(n).name for n in names if n.startswith("pipelines/") and n.endswith(".toml")}
    assert recipes == {p.name for p in (REPO / "pipelines").glob("*.toml")} and "demo.toml" in recipes
    assert "posecrop/data/canonical_bank.json" in names
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "posecrop-reid = pipelines.app:main" in wheel.read(entry).decode()


def test_recipes_are_found_by_name_inside_the_package(tmp_path, monkeypatch):
    from pipelines import RECIPES_DIR, find_recipe, shipped_recipes

    monkeypatch.chdir(tmp_path)  # away from the checkout: only the package's recipes
    assert {"demo", "market"} <= set(shipped_recipes())
    for name in ("market", "market.toml", "pipelines/market.toml"):
        assert find_recipe(name) == RECIPES_DIR / "market.toml"
    (tmp_path / "market.toml").write_text("[recipe]\n")
    assert find_recipe("market.toml") == Path("market.toml")      # a file that exists wins
    assert find_recipe("nowhere/else.toml") == Path("nowhere/else.toml")  # left for the runner to name
