"""pipelines: the experiment recipes (`*.toml`, shipped inside this package) and what drives both stages.

- `pipelines.runner`: the recipe runner (`run`, `demo`): synth -> crop (posecrop) -> train -> evaluate (reidtrain)
  with up-to-date skipping and resume. The only module that imports both stages (besides the command line and
  the benchmarks).
- `pipelines.commands`: the `run` and `demo` commands.
- `pipelines.app`: the typer app of the command line (`posecrop-reid`, `python cli.py`).

A recipe is named by its path, or by its name alone (`market`, `demo`, ...) for the recipes shipped here, so that
`posecrop-reid run market` and `make demo` also work from an installed wheel.
"""
from __future__ import annotations

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped in this package (file stems of pipelines/*.toml)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def find_recipe(name_or_path: str | Path) -> Path:
    """The recipe file: `name_or_path` itself when it exists, else the shipped recipe of that name (`market`,
    `market.toml`, `pipelines/market.toml`); the path unchanged when neither exists (the runner names it)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = RECIPES_DIR / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if shipped.is_file() and path.parent in (Path("."), Path("pipelines")):
        return shipped
    return path
