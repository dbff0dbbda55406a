"""`python cli.py compare OUT`: the comparison table and ranked-list picture of a recipe run (reidtrain.comparison)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("compare", help="One table of every model a recipe run trained (R1/R5/R10/mAP, parameters, "
                                 "MACs, training img/s, beside the figures each model's paper reports) and a "
                                 "ranked-list picture with one row per model; writes OUT/comparison.md, "
                                 "comparison.json and comparison_ranked.png.")
    def compare_cmd(
        out: Path = typer.Argument(..., help="The output folder of `cli.py run` (holding runs/<model>/)."),
        run: Optional[List[Path]] = typer.Option(None, "--run", help="Compare these run folders instead of "
                                                 "OUT/runs/* (repeatable; the files are still written to OUT)."),
        title: Optional[str] = typer.Option(None, "--title", help="Title of the table (default: the recipe's)."),
    ) -> None:
        import sys

        from rich.console import Console

        from reidkit.errors import ReidError, one_line

        from .comparison import rich_table, write_comparison

        try:
            rows, files = write_comparison(out, run or None, title)
        except ReidError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            raise typer.Exit(1) from None
        console = Console(width=None if sys.stdout.isatty() else 240)   # a pipe: keep the columns whole
        console.print(rich_table(rows, files[0].read_text(encoding="utf-8").splitlines()[0].lstrip("# ")))
        console.print("written: " + ", ".join(str(f) for f in files))
