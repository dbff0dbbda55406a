"""`python cli.py run | demo`: recipes chaining both stages (pipelines.runner loads inside the commands)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import RECIPES_DIR, find_recipe, shipped_recipes

DEMO_RECIPE = RECIPES_DIR / "demo.toml"


def register(app: typer.Typer) -> None:
    @app.command("run", help="Run a recipe (pipelines/*.toml): synth (synthetic recipes) -> crop -> train -> "
                             "evaluate for every model of the recipe, skipping stages whose outputs are up to date; "
                             "prints the results table.")
    def run_cmd(
        recipe: Path = typer.Argument(..., help="Recipe TOML file, e.g. pipelines/market.toml, or the name of a "
                                      f"shipped recipe ({', '.join(shipped_recipes())})."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: out/<recipe name>)."),
        model: Optional[List[str]] = typer.Option(None, "--model", help="Only this model of the recipe (repeatable)."),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="Override TABLE.KEY=VALUE (TOML value, "
                                                 "repeatable), e.g. --set train.epochs=5 --set dataset.root=/data/m."),
        jobs: Optional[int] = typer.Option(None, "--jobs", min=1, help="Models trained at the same time, each in "
                                           "its own process (default: the recipe's 'jobs' in its 'recipe' table, "
                                           "else 1)."),
        force: bool = typer.Option(False, "--force", help="Rerun every stage even when up to date."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    ) -> None:
        _run(find_recipe(recipe), out, model, set_ or [], force, progress, jobs)

    @app.command("demo", help="The whole pipeline on the built-in synthetic dataset (pipelines/demo.toml), on the CPU "
                              "in a few minutes: synth -> crop -> train baseline and intra-inter -> evaluate; prints "
                              "their results side by side.")
    def demo_cmd(
        out: Path = typer.Option(Path("demo_out"), "--out", help="Output folder."),
        force: bool = typer.Option(False, "--force", help="Rerun every stage even when up to date."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="Override TABLE.KEY=VALUE of the demo recipe "
                                                 "(TOML value, repeatable), e.g. --set train.epochs=1."),
    ) -> None:
        _run(DEMO_RECIPE, out, None, set_ or [], force, progress, None)


def _run(recipe_path: Path, out: Optional[Path], models: Optional[List[str]], overrides: List[str], force: bool,
         progress: bool, jobs: Optional[int]) -> None:
    from rich.console import Console

    from reidtrain.commands_train import EXIT_BAD_INPUT, _expected_errors, _fail, one_line
    from reidtrain.reports import results_table

    errors = _expected_errors()
    try:
        from .runner import load_recipe, run_recipe
        recipe = load_recipe(recipe_path, overrides)
        result = run_recipe(recipe, out, force, models, progress, Console(stderr=True), jobs)
    except errors as e:
        _fail(one_line(e), getattr(e, "exit_code", EXIT_BAD_INPUT))
    except KeyboardInterrupt:
        _fail("interrupted; finished stages and epochs are kept - run the same command again to continue")
    console = Console()
    console.print(results_table(recipe.name, result.results))
    console.print(f"outputs in {result.out}: results.md, summary.html, cmc.png, ranked_list.png; "
                  f"per model runs/<model>/ (checkpoints, metrics.jsonl, tb/, eval/)")
