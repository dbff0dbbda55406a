"""Our runs in the layout of the paper's Tables 6-11, the paper's numbers beside ours, reversed orderings flagged.

    collect_runs(paths)          run folders (RUN/eval/metrics.json, RUN/config.json), or recipe outputs (OUT/runs/*)
    build_table(n, runs, rows)   the table: every paper row in the paper's order, ours where a run maps onto it
    reversals(table)             pairs of rows whose order under a metric is the opposite of the paper's
    render_markdown / render_png / write_table   tableN.md and tableN.png

Which run fills which row: see reidtrain.paper_tables (by model, lambda, beta, dataset; `rows` overrides it by run
name). Two runs on the same row and column group (e.g. `aligned` and `aligned-paper` under Table 6's "Aligned")
each get a row; the second is labelled "ROW [run]". A reversal: under one group and metric, the paper has row a
above row b (strictly) and we have b strictly above a; rows without our value or the paper's take no part.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from reidkit.atomic import atomic_write_text
from reidkit.errors import ReidError

from .paper_tables import (BEST_PARAMS, BETA_ROWS, BRANCH_ROWS, DATASET_LABELS, DEFAULT_PARAMS, LAMBDA_ROWS, TABLES,
                           PaperTable)

TABLE_NUMBERS = tuple(TABLES)
METRICS_FILE = Path("eval") / "metrics.json"


class ReportError(ReidError, ValueError):
    """A run folder cannot be read, or a table / row named on the command line does not exist."""


@dataclass
class RunRecord:
    """What the tables need of one trained and evaluated run."""

    name: str
    path: Path
    model: str
    dataset: str
    metrics: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    lambda_intra: float | None = None
    beta: float | None = None                    # fraction of H the crops were placed at
    branches: dict[str, dict] = field(default_factory=dict)    # evaluate --branches (Table 7)


# ------------------------------------------------------------------------------------------------ reading
def _cache_beta(cache: Any) -> float | None:
    if not cache:
        return None
    try:
        from posecrop.cache_reader import cache_settings
        beta = cache_settings(cache).get("beta")
    except (ReidError, OSError, ValueError):
        return None
    return None if beta is None else float(beta)


def read_run(path: Path, name: str | None = None) -> RunRecord:
    """A run folder (its eval/metrics.json, and config.json for model options, lambda and beta)."""
    path = Path(path)
    metrics_path = path / METRICS_FILE
    try:
        metrics = json.loads(metrics_path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{metrics_path}: no evaluation (run `evaluate` on {path}, or give a recipe's output "
                          f"folder)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"{metrics_path}: not valid JSON ({e})") from e
    train: dict[str, Any] = {}
    config_path = path / "config.json"
    if config_path.is_file():
        try:
            train = json.loads(config_path.read_text()).get("train", {})
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ReportError(f"{config_path}: not valid JSON ({e})") from e
    options = dict(train.get("model_options") or {})
    lam = options.get("lambda_intra", train.get("lambda_intra"))
    beta = train.get("beta")
    if beta is None:
        beta = _cache_beta(train.get("cache") or metrics.get("cache"))
    return RunRecord(name=name or path.name, path=path, model=str(train.get("model") or metrics.get("model", "")),
                     dataset=str(metrics.get("dataset", "")), metrics=metrics, options=options,
                     lambda_intra=None if lam is None else float(lam), beta=None if beta is None else float(beta),
                     branches=dict(metrics.get("branches") or {}))


def collect_runs(paths: Iterable[Path]) -> list[RunRecord]:
    """Run folders, and recipe output folders (OUT/runs/* with an evaluation), in the order given."""
    runs: list[RunRecord] = []
    for p in map(Path, paths):
        if (p / METRICS_FILE).is_file():
            runs.append(read_run(p))
        elif (p / "runs").is_dir():
            found = sorted(r for r in (p / "runs").iterdir() if (r / METRICS_FILE).is_file())
            if not found:
                raise ReportError(f"{p}/runs: no evaluated run (no runs/*/{METRICS_FILE})")
            runs += [read_run(r) for r in found]
        elif not p.exists():
            raise ReportError(f"{p}: no such run folder")
        else:
            raise ReportError(f"{p}: neither a run folder ({METRICS_FILE}) nor a recipe output folder (runs/)")
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    for r in runs:     # the same run name from two recipe outputs: tell them apart by their parent folder
        if r.name in dup:
            r.name = f"{r.path.parent.parent.name}/{r.name}" if r.path.parent.name == "runs" else str(r.path)
    return runs


# ------------------------------------------------------------------------------------------------ row mapping
def _close(a: float | None, b: float, tol: float = 1e-6) -> bool:
    return a is not None and abs(a - b) <= tol


def default_params(run: RunRecord) -> bool:
    """Tables 6-9 (but the starred row) are at lambda 0.5, beta 5H/48; a run known to differ is not on them."""
    lam, beta = DEFAULT_PARAMS
    return ((run.lambda_intra is None or _close(run.lambda_intra, lam))
            and (run.beta is None or _close(run.beta, beta, 1e-4)))


def _fixed(run: RunRecord, attr: str, value: float) -> bool:
    """The parameter a table holds fixed (Table 10: beta, Table 11: lambda) is the paper's, or not known."""
    v = getattr(run, attr)
    return v is None or _close(v, value, 1e-4)


def _base_model(model: str) -> str:
    return model[:-len("-paper")] if model.endswith("-paper") else model


def _group(table: PaperTable, run: RunRecord) -> str | None:
    if len(table.groups) == 1:
        return table.groups[0]        # a Market-only table takes a run of any dataset (the note says which)
    return run.dataset if run.dataset in table.groups else None


def row_of(number: int, run: RunRecord) -> str | None:
    """The paper row `run` belongs to in table `number` (Table 7: see `branch_cells`), or None."""
    model, opts = _base_model(run.model), run.options
    if number == 6:
        if opts.get("attention") == "joint" or opts.get("fusion") not in (None, "concat", "inter"):
            return None
        best = BEST_PARAMS.get(run.dataset)
        if model == "intra-inter" and best and _close(run.lambda_intra, best[0]) and _close(run.beta, best[1], 1e-4):
            return "*Intra+inter"
        rows = {"baseline": "Baseline", "aligned": "Aligned", "intra": "Intra", "inter": "Inter",
                "intra-inter": "Intra+inter"}
        return rows.get(model) if default_params(run) else None
    if number in (8, 9) and not default_params(run):
        return None
    if number == 8:
        if run.model == "intra-inter-joint" or (model == "intra-inter" and opts.get("attention") == "joint"):
            return "Without attention decomposition"
        return "With attention decomposition" if model == "intra-inter" else None
    if number == 9:
        if run.model == "aligned-fc" or opts.get("fusion") == "fc":
            return "FC fusion"
        if run.model == "aligned-paper" or (model == "aligned" and opts.get("fused_loss") is False):
            return "Concatenation"
        return "Inter-attention" if model == "inter" and opts.get("fusion") in (None, "inter") else None
    if number == 10:
        if model != "intra-inter" or run.lambda_intra is None or not _fixed(run, "beta", DEFAULT_PARAMS[1]):
            return None
        return next((label for lam, label in LAMBDA_ROWS.items() if _close(run.lambda_intra, lam)), None)
    if number == 11:
        if model != "intra-inter" or run.beta is None or not _fixed(run, "lambda_intra", DEFAULT_PARAMS[0]):
            return None
        k = round(run.beta * 48)
        return BETA_ROWS.get(k) if abs(run.beta * 48 - k) < 1e-3 else None
    return None


def branch_cells(run: RunRecord) -> list[tuple[str, str, dict]]:
    """Table 7: (row, group, metrics) of every per-branch result of `run` (with / without intra-attention)."""
    if not default_params(run):
        return []
    group = "with" if _base_model(run.model).startswith("intra") else "without"
    return [(BRANCH_ROWS[label], group, m) for label, m in run.branches.items() if label in BRANCH_ROWS]


# ------------------------------------------------------------------------------------------------ the table
@dataclass
class Row:
    label: str                   # the paper's row label ("Aligned"), or "Aligned [run]" for a second run
    paper_row: str | None        # the paper row whose numbers stand beside ours (None: not in the paper)
    ours: dict[str, dict[str, float | None]] = field(default_factory=dict)   # group -> metric -> value
    runs: dict[str, str] = field(default_factory=dict)                       # group -> run name


@dataclass
class Table:
    paper: PaperTable
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)   # runs that map onto no row

    @property
    def number(self) -> int:
        return self.paper.number

    def paper_value(self, row: Row, group: str, metric: str) -> float | None:
        return self.paper.value(row.paper_row, group, metric) if row.paper_row else None


def build_table(number: int, runs: list[RunRecord], rows: Mapping[str, str] | None = None) -> Table:
    """Table `number` with every paper row in order and our values from `runs`. `rows`: run name -> paper row,
    overriding the automatic mapping."""
    if number not in TABLES:
        raise ReportError(f"no table {number} (tables: {', '.join(map(str, TABLE_NUMBERS))})")
    paper = TABLES[number]
    rows = dict(rows or {})
    unknown_runs = sorted(set(rows) - {r.name for r in runs})
    if unknown_runs:
        raise ReportError(f"--row names run {unknown_runs[0]!r}, which is not among the runs "
                          f"({', '.join(r.name for r in runs)})")
    bad = [label for label in rows.values() if label not in paper.rows]
    if bad:
        raise ReportError(f"table {number} has no row {bad[0]!r} (rows: {', '.join(paper.rows)})")
    out = [Row(label, label) for label in paper.rows]
    by_label = {r.label: r for r in out}
    table = Table(paper, out)
    cells: list[tuple[str, str, dict, RunRecord]] = []
    for run in runs:
        if number == 7:
            found = [(row, group, m, run) for row, group, m in branch_cells(run)]
            if rows.get(run.name):
                found = [(row, group, m, run) for row, group, m in found if row == rows[run.name]]
        else:
            row = rows.get(run.name) or row_of(number, run)
            group = _group(paper, run)
            found = [(row, group, run.metrics, run)] if row and group else []
        if not found:
            table.unused.append(run.name)
        cells += found
        if found and len(paper.groups) == 1 and run.dataset and run.dataset != paper.groups[0] and number != 7:
            table.notes.append(f"{run.name}: on {run.dataset}, the paper's numbers are on "
                               f"{DATASET_LABELS[paper.groups[0]]}")
    if number in (6, 7, 8, 9) and table.unused:
        table.notes.append(f"the paper's rows are at lambda {DEFAULT_PARAMS[0]:g}, beta 5H/48 (Table 6's starred row "
                           f"at the dataset's best); runs at other values take no row of table {number}")
    for row_label, group, metrics, run in cells:
        row = by_label[row_label]
        if group in row.runs:     # a second run on this cell: its own row under the same paper row
            label = f"{row_label} [{run.name}]"
            row = by_label.get(label) or Row(label, row_label)
            if label not in by_label:
                by_label[label] = row
                out.insert(max(i for i, r in enumerate(out) if r.paper_row == row_label) + 1, row)
        row.ours[group] = {m: (None if metrics.get(m) is None else float(metrics[m])) for m in paper.metrics}
        row.runs[group] = run.name
    fixed = {10: "beta at 5H/48", 11: "lambda at 0.5"}.get(number)
    if fixed is not None and table.unused:
        table.notes.append(f"table {number} holds {fixed}: runs at other values (or other models) take no row")
    return table


@dataclass(frozen=True)
class Reversal:
    group: str
    metric: str
    above: str           # the row the paper ranks higher
    below: str
    paper: tuple[float, float]
    ours: tuple[float, float]


def reversals(table: Table) -> list[Reversal]:
    """Every pair of rows (group, metric) where the paper's order and ours are strictly opposite."""
    found = []
    for group in table.paper.groups:
        for metric in table.paper.metrics:
            vals = []
            for row in table.rows:
                p, o = table.paper_value(row, group, metric), row.ours.get(group, {}).get(metric)
                if p is not None and o is not None and math.isfinite(o):
                    vals.append((row.label, p, o))
            for i, (a, pa, oa) in enumerate(vals):
                for b, pb, ob in vals[i + 1:]:
                    if (pa - pb) * (oa - ob) < 0:
                        hi, lo = ((a, pa, oa), (b, pb, ob)) if pa > pb else ((b, pb, ob), (a, pa, oa))
                        found.append(Reversal(group, metric, hi[0], lo[0], (hi[1], lo[1]), (hi[2], lo[2])))
    return found


# ------------------------------------------------------------------------------------------------ rendering
def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def columns(table: Table) -> list[tuple[str, str]]:
    """(group, metric) of every column pair shown: all of the paper's but those where neither the paper nor we
    have a value (CUHK03's mAP, which the paper does not report)."""
    return [(g, m) for g in table.paper.groups for m in table.paper.metrics
            if any(table.paper_value(r, g, m) is not None or r.ours.get(g, {}).get(m) is not None
                   for r in table.rows)]


def header(table: Table) -> list[str]:
    cols = ["row"]
    multi = len(table.paper.groups) > 1
    for group, metric in columns(table):
        cols += [f"{DATASET_LABELS[group]} {metric}" if multi else metric, "paper"]
    return cols + ["runs", "reversed"]


def body(table: Table, found: list[Reversal] | None = None) -> list[list[str]]:
    found = reversals(table) if found is None else found
    counts: dict[str, int] = {}
    for r in found:
        counts[r.above] = counts.get(r.above, 0) + 1
        counts[r.below] = counts.get(r.below, 0) + 1
    lines = []
    for row in table.rows:
        cells = [row.label]
        for group, metric in columns(table):
            cells += [_fmt(row.ours.get(group, {}).get(metric)), _fmt(table.paper_value(row, group, metric))]
        runs = ", ".join(dict.fromkeys(row.runs.values()))
        cells += [runs or "-", f"! {counts[row.label]}" if counts.get(row.label) else ""]
        lines.append(cells)
    return lines


def render_markdown(table: Table) -> str:
    found = reversals(table)
    cols = header(table)
    lines = [f"# Table {table.number}: {table.paper.title} - ours beside the paper's", "",
             "Values in percent; each metric is followed by the paper's value. `reversed`: the row's number of "
             "pairs whose order differs from the paper's (listed below).", "",
             "| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 3) + "---|---|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body(table, found)]
    lines += ["", f"## Reversed orderings ({len(found)})", ""]
    if not found:
        lines.append("None: wherever both have values, our order of the rows is the paper's.")
    for r in found:
        where = f"{DATASET_LABELS[r.group]} {r.metric}" if len(table.paper.groups) > 1 else r.metric
        lines.append(f"- {where}: paper {r.above} {r.paper[0]:.2f} > {r.below} {r.paper[1]:.2f}; "
                     f"ours {r.above} {r.ours[0]:.2f} < {r.below} {r.ours[1]:.2f}")
    if table.notes or table.unused:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in table.notes]
        if table.unused:
            lines.append(f"- runs on no row of table {table.number}: {', '.join(table.unused)}")
    return "\n".join(lines) + "\n"


def render_png(table: Table, path: Path) -> Path:
    """The table as a picture: ours and the paper's side by side, the cells of reversed pairs in red."""
    from matplotlib.figure import Figure

    from .reports import _save

    found = reversals(table)
    shown = columns(table)
    cols = header(table)[:-1]
    rows = [cells[:-1] for cells in body(table, found)]
    flagged = {(r.above, r.group, r.metric) for r in found} | {(r.below, r.group, r.metric) for r in found}
    width = 1.6 + 0.62 * (len(cols) - 2) + 0.11 * max(len(c[-1]) for c in rows)
    fig = Figure(figsize=(max(6.0, width), 0.9 + 0.3 * (len(rows) + 1)))
    ax = fig.add_subplot(111)
    ax.axis("off")
    grid = ax.table(cellText=rows, colLabels=[c.replace(" ", "\n", 1) for c in cols], loc="center",
                    cellLoc="center")
    grid.auto_set_font_size(False)
    grid.set_fontsize(8)
    grid.scale(1.0, 1.35)
    for (i, j), cell in grid.get_celld().items():
        if i == 0:
            cell.set_facecolor("#dde3ea")
            cell.set_height(cell.get_height() * 1.6)
            continue
        if j == 0 or j == len(cols) - 1:
            cell.set_text_props(ha="left")
            cell.PAD = 0.03
        if 1 <= j < len(cols) - 1:
            group, metric = shown[(j - 1) // 2]
            if j % 2 == 0:
                cell.set_text_props(color="#666666")           # the paper's column
            elif (table.rows[i - 1].label, group, metric) in flagged:
                cell.set_facecolor("#f6c6c6")
    grid.auto_set_column_width(list(range(len(cols))))
    ax.set_title(f"Table {table.number}: {table.paper.title}\nours (black) beside the paper's (grey); red: order "
                 f"reversed against the paper ({len(found)} pair(s))", fontsize=9)
    return _save(fig, path)


def write_table(number: int, runs: list[RunRecord], out: Path, rows: Mapping[str, str] | None = None
                ) -> tuple[Table, list[Path]]:
    """tableN.md and tableN.png in `out`."""
    table = build_table(number, runs, rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"table{number}.md"
    atomic_write_text(md, render_markdown(table))
    return table, [md, render_png(table, out / f"table{number}.png")]


def parse_table_names(spec: str) -> list[int]:
    """'6', 'table10', '6,7', 'all' -> table numbers."""
    if spec.strip().lower() == "all":
        return list(TABLE_NUMBERS)
    numbers = []
    for part in spec.split(","):
        part = part.strip().lower().removeprefix("table")
        if not part.isdigit() or int(part) not in TABLES:
            raise ReportError(f"unknown table {part!r}: choose from {', '.join(map(str, TABLE_NUMBERS))} or 'all'")
        numbers.append(int(part))
    return numbers
