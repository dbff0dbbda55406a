"""`python cli.py report TABLE RUN_DIR...`: our runs in the layout of the paper's Tables 6-11 (reidtrain.tables)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("report", help="Write the paper's Tables 6-11 with our numbers beside the paper's (tableN.md, "
                                "tableN.png) from evaluated runs: run folders (RUN/eval/metrics.json) or the output "
                                "folder of a recipe (`run`, e.g. a Table 10 sweep). Flags rows whose order differs "
                                "from the paper's.")
    def report_cmd(
        table: str = typer.Argument(..., help="6, 7, 8, 9, 10, 11, a comma list (6,9) or 'all' (every table with "
                                              "at least one of our runs)."),
        runs: List[Path] = typer.Argument(..., help="Run folders and/or recipe output folders."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: OUT/tables for one recipe "
                                           "output folder, else ./tables)."),
        row: Optional[List[str]] = typer.Option(None, "--row", help="RUN=ROW: put run RUN (its folder name) on "
                                                "the paper's row ROW, e.g. --row 'my-fc=FC fusion' (split at the "
                                                "last '='). Repeatable."),
    ) -> None:
        from rich.console import Console
        from rich.markup import escape

        from reidkit.errors import ReidError, one_line

        from .tables import ReportError, collect_runs, parse_table_names, reversals, write_table

        console = Console()
        try:
            numbers = parse_table_names(table)
            overrides = {}
            for item in row or []:
                name, sep, label = item.rpartition("=")
                if not sep or not name or not label:
                    raise ReportError(f"--row expects RUN=ROW (e.g. 'my-fc=FC fusion'), got {item!r}")
                overrides[name] = label
            records = collect_runs(runs)
            if out is None:
                single = len(runs) == 1 and (runs[0] / "runs").is_dir()
                target = runs[0] / "tables" if single else Path("tables")
            else:
                target = out
            written = 0
            for n in numbers:
                t, files = write_table(n, records, target, overrides)
                if len(numbers) > 1 and not any(r.runs for r in t.rows):
                    for f in files:
                        f.unlink()
                    continue
                written += 1
                flags = reversals(t)
                filled = sum(1 for r in t.rows if r.runs)
                console.print(f"table {n}: {filled} row(s) with our numbers, {len(flags)} reversed pair(s): "
                              f"{escape(str(files[0]))}, {escape(files[1].name)}")
            if not written:
                raise ReportError(f"none of the runs maps onto a row of table(s) {table}")
        except (ReidError, FileNotFoundError) as e:
            Console(stderr=True).print(f"[bold red]error:[/] {escape(one_line(e))}", highlight=False)
            raise typer.Exit(1)
