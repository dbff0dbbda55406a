"""The layout (README, Layout): two stages that meet only at a small contract, shared utilities outside both,
and one place (pipelines) that drives both. Read from the source (AST), so a new import anywhere is checked."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what stage two (reidtrain) may import of stage one: the cache schema and reader, the crop geometry
CONTRACT = {"posecrop.schema", "posecrop.cache_reader", "posecrop.crops", "posecrop.regions", "posecrop.keypoints",
            "posecrop.records", "posecrop.rebox"}
PACKAGES = ("posecrop", "reidtrain", "reidkit", "pipelines", "benchmarks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved; `from a import b` counts a.b too
    when b is a module of this repository)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            out.add(base)
            for a in node.names:
                sub = REPO / Path(*f"{base}.{a.name}".split("."))
                if sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file():
                    out.add(f"{base}.{a.name}")
    return {m for m in out if m}


def _files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _top(name: str) -> str:
    return name.split(".")[0]


def _violations(package: str, allowed) -> list[str]:
    return [f"{f.relative_to(REPO)} imports {m}" for f in _files(package) for m in sorted(imports_of(f))
            if _top(m) in PACKAGES + ("cli",) and not allowed(m)]


def test_reidtrain_imports_only_the_contract_of_posecrop():
    assert not _violations("reidtrain", lambda m: _top(m) in ("reidtrain", "reidkit") or m in CONTRACT)


def test_posecrop_knows_nothing_of_the_training_stage_or_the_pipelines():
    assert not _violations("posecrop", lambda m: _top(m) in ("posecrop", "reidkit"))


def test_reidkit_belongs_to_no_stage():
    assert not _violations("reidkit", lambda m: _top(m) == "reidkit")


def test_the_contract_is_closed():
    """The contract modules import only each other and reidkit: reading a cache pulls in nothing of the crop
    stage's machinery."""
    for name in sorted(CONTRACT):
        path = REPO / Path(*name.split(".")).with_suffix(".py")
        bad = [m for m in imports_of(path) if _top(m) in PACKAGES and _top(m) != "reidkit" and m not in CONTRACT]
        assert not bad, f"{name} imports {bad}"


def test_only_pipelines_cli_and_benchmarks_import_both_stages():
    """A module importing stage one's machinery (beyond the contract) and stage two drives both: it belongs in
    pipelines/ (or is the command line, or a benchmark)."""
    drivers = [f for f in sorted(REPO.glob("*.py")) + [p for pkg in PACKAGES for p in _files(pkg)]
               if any(_top(m) == "posecrop" and m not in CONTRACT for m in imports_of(f))
               and any(_top(m) == "reidtrain" for m in imports_of(f))]
    outside = [str(f.relative_to(REPO)) for f in drivers if f.relative_to(REPO).parts[0] not in
               ("pipelines", "benchmarks", "cli.py")]
    assert not outside, outside


def test_the_pipelines_do_drive_both_stages():
    runner = imports_of(REPO / "pipelines" / "runner.py")
    assert {"posecrop", "reidtrain"} <= {_top(m) for m in runner}


def test_the_crop_workers_and_the_dataset_readers_stay_free_of_pyarrow():
    """Spawned crop workers import posecrop.crop_worker; neither it nor the dataset readers pull in pyarrow (the
    cache is the main process's)."""
    import subprocess
    import sys

    code = ("import sys, posecrop.crop_worker, posecrop.datasets, posecrop.sources.chain; "
            "print('pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
