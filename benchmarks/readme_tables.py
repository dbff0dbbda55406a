"""README's performance tables, made from the benchmark result files so that they cannot drift from them.

`python -m benchmarks.readme_tables` rewrites the blocks of README.md between marker comments
(`<!-- perf:NAME:start -->` ... `<!-- perf:NAME:end -->`) from benchmarks/results/; `--check` writes nothing and
exits 1 with a unified diff when README.md is not what it would write. The suite (benchmarks/suite.py) runs it
after writing results.json into benchmarks/results.

The blocks (BLOCKS): `pose-crop` (blazepose.json, crop_market.json and the quick suite's mmpose row),
`eval-rerank` (eval-full/results.json, the full-size evaluation / re-ranking / flip stages) and `quick-suite`
(every row of results.json). Each table row: what, our figure, the reference's figure, their ratio, the target and
whether it is met; under each table the source files and their dates. Everything but the file I/O at the edges
(load_results, update_readme, main) is a pure function of its arguments.
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from reidkit.errors import ReidError

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"
GENERATOR = "python -m benchmarks.readme_tables"


class ResultsFileError(ReidError, ValueError):
    """A results file is missing or malformed, or README.md lacks a block's markers (the message names the file)."""


@dataclass(frozen=True)
class Block:
    """One generated block of README.md: its marker name and the (results file, stages or None for all) it shows."""

    name: str
    sources: tuple[tuple[str, tuple[str, ...] | None], ...]


BLOCKS: tuple[Block, ...] = (
    Block("pose-crop", (("blazepose.json", None), ("crop_market.json", None), ("results.json", ("pose-mmpose",)))),
    Block("eval-rerank", (("eval-full/results.json", None),)),
    Block("quick-suite", (("results.json", None),)),
)


@dataclass
class Results:
    """The rows of one results file and where / when they were measured."""

    path: str                 # as shown in the README, e.g. benchmarks/results/blazepose.json
    mode: str                 # "quick" / "full" / "" when the file does not say
    date: str                 # "" when the file does not say
    rows: list[dict]
    updates: list[dict] = field(default_factory=list)   # meta.partial_updates: stages re-run later
    errors: dict = field(default_factory=dict)          # meta.errors: stages that failed


# ---------------------------------------------------------------- reading

REQUIRED_ROW_KEYS = ("stage", "ours", "ours_value", "unit")


def parse_results(data: object, path: str) -> Results:
    """A results file's content: a suite file {"meta", "rows"}, a stage file {"quick", "rows"} or a one-row file
    {"quick", "date", "row"}. ResultsFileError naming `path` and the problem otherwise."""
    if not isinstance(data, dict):
        raise ResultsFileError(f"{path}: expected a JSON object, found {type(data).__name__}")
    if "rows" in data:
        rows = data["rows"]
        if not isinstance(rows, list):
            raise ResultsFileError(f"{path}: 'rows' is {type(rows).__name__}, not a list")
    elif "row" in data:
        rows = [data["row"]]
    else:
        raise ResultsFileError(f"{path}: missing key 'rows'")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ResultsFileError(f"{path}: row {i} is {type(row).__name__}, not an object")
        missing = [k for k in REQUIRED_ROW_KEYS if k not in row]
        if missing:
            raise ResultsFileError(f"{path}: row {i} ({row.get('stage', 'no stage')}) missing key '{missing[0]}'")
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise ResultsFileError(f"{path}: 'meta' is {type(meta).__name__}, not an object")
    if "meta" in data and "date" not in meta:
        raise ResultsFileError(f"{path}: missing key 'meta.date'")
    mode = meta.get("mode") or ({True: "quick", False: "full"}.get(data["quick"], "") if "quick" in data else "")
    updates = meta.get("partial_updates") or []
    return Results(path=path, mode=str(mode), date=str(meta.get("date") or data.get("date") or ""), rows=rows,
                   updates=[u for u in updates if isinstance(u, dict)], errors=meta.get("errors") or {})


def display_path(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def load_results(path: Path) -> Results:
    shown = display_path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ResultsFileError(f"{shown}: not found (run the benchmark that writes it)") from None
    except OSError as e:
        raise ResultsFileError(f"{shown}: cannot be read ({e.strerror})") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ResultsFileError(f"{shown}: not valid JSON ({e})") from None
    return parse_results(data, shown)


# ---------------------------------------------------------------- targets

_TARGET = re.compile(r"^(?P<op>>=|<=|>|<|=)?\s*(?P<num>[0-9][0-9,]*(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)\s*(?P<rest>.*)$",
                     re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    """A parsed target. `op` ">=", "<=", ">", "<", "=" or "completes"; `unit` set when the target is a figure of
    ours in that unit (">= 100 img/s") rather than a ratio (">= 5", ">= 0.67 (within 1.5x)")."""

    op: str
    value: float = 0.0
    unit: str = ""


def parse_target(target: object) -> Target | None:
    """The target column's text or number as a Target; None for no target ("-", "", None) or text it cannot read.

    A bare number is a lower bound on the ratio (the suite writes `2.0` for ">= 2x"); a trailing parenthesis is a
    comment; a unit after the number makes it a bound on our own figure."""
    if target is None or isinstance(target, bool):
        return None
    if isinstance(target, (int, float)):
        return Target(">=", float(target))
    text = str(target).strip()
    if text.lower() == "completes":
        return Target("completes")
    m = _TARGET.match(text)
    if not m:
        return None
    rest = re.sub(r"\(.*\)\s*$", "", m["rest"]).strip()
    if rest.lower() == "x":
        rest = ""
    return Target(m["op"] or ">=", float(m["num"].replace(",", "")), rest)


def target_met(row: dict, target: Target | None) -> bool | None:
    """Whether the row meets its target; None when there is none, or the figure it bounds is missing, or the
    target's unit is not the row's."""
    if target is None:
        return None
    if target.op == "completes":
        return row.get("ours_value") is not None
    if target.unit:
        if not str(row.get("unit", "")).startswith(target.unit.split()[0]):
            return None
        value = row.get("ours_value")
    else:
        value = row.get("ratio")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return {">=": value >= target.value, "<=": value <= target.value, ">": value > target.value,
            "<": value < target.value, "=": value == target.value}[target.op]


# ---------------------------------------------------------------- formatting

def fmt_num(v: object) -> str:
    """A figure to 3 significant digits, but never fewer than its integer digits (1,242 not 1.24e+03)."""
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if abs(v) >= 100:   # half away from zero (round() would give 174 for 174.5)
        return f"{int(math.copysign(math.floor(abs(v) + 0.5), v)):,}"
    if v == 0:
        return "0"
    return f"{v:.3g}"


def cell(text: object) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


# Extra per-row figures some benchmarks record, shown after our figure.
EXTRAS: tuple[tuple[str, str], ...] = (
    ("free_cores_img_per_s", "{} img/s on free cores"),
    ("total_seconds", "{} s in all"),
    ("parent_peak_mb", "main process {} MB"),
    ("worker_peak_mb", "largest worker {} MB"),
    ("cache_mb", "cache {} MB"),
)

_NUM = r"([0-9.]+(?:e[+-]?[0-9]+)?)"


def agreement(notes: object) -> str:
    """How closely ours and the reference agree, as the evaluation / re-ranking benchmarks state it in their notes
    ("max |CMC diff| ... 2.6e-08", "|mAP diff| 1.4e-06", "N queries have a true match at exactly ...",
    "max |diff| to torchreid 4.1e-07", "same ranks"); "" when the notes say nothing of it."""
    if not isinstance(notes, str):
        return ""
    parts = []
    if m := re.search(r"max \|CMC diff\|(?: \([^)]*\))? " + _NUM, notes):
        parts.append(f"CMC max diff {m[1]}")
    if m := re.search(r"\|mAP diff\| " + _NUM, notes):
        parts.append(f"mAP diff {m[1]}")
    if m := re.search(r"(\d+) queries have a true match at exactly", notes):
        parts.append(f"{m[1]} tied {'query' if m[1] == '1' else 'queries'}")
    if m := re.search(r"max \|diff\|(?: to torchreid)? " + _NUM, notes):
        parts.append(f"max diff {m[1]}")
    if not parts and "same ranks" in notes:
        parts.append("same ranks")
    return ", ".join(parts)


def row_cells(row: dict, with_agreement: bool) -> list[str]:
    unit = row.get("unit") or ""
    ours = f"{fmt_num(row.get('ours_value'))} {unit}".strip()
    extras = [fmt.format(fmt_num(row[k])) for k, fmt in EXTRAS if row.get(k) is not None]
    if extras:
        ours += f" ({', '.join(extras)})"
    ref_name = row.get("reference") or ""
    ref_value = row.get("reference_value")
    reference = ref_name if ref_value is None else f"{ref_name}: {fmt_num(ref_value)} {unit}".strip(": ")
    target_text = row.get("target")
    if target_text in (None, ""):
        target_shown = "-"
    elif isinstance(target_text, (int, float)) and not isinstance(target_text, bool):
        target_shown = f">= {fmt_num(target_text)}"   # a bare number is a lower bound on the ratio
    else:
        target_shown = str(target_text)
    met = target_met(row, parse_target(target_text))
    cells = [f"`{row['stage']}` {row['ours']}", ours, reference or "-", fmt_num(row.get("ratio")), target_shown,
             {True: "yes", False: "**no**", None: "-"}[met], fmt_num(row.get("peak_mem_mb"))]
    if with_agreement:
        cells.append(agreement(row.get("notes")) or "-")
    return [cell(c) for c in cells]


def render_table(rows: list[dict]) -> str:
    """A markdown table, one line per row; an agreement column when any row's notes state one."""
    with_agreement = any(agreement(r.get("notes")) for r in rows)
    head = ["what", "ours", "reference", "ratio", "target", "met", "peak MB"] + (["agreement"] if with_agreement
                                                                                 else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row_cells(r, with_agreement)) + " |" for r in rows]
    return "\n".join(lines)


def describe_source(res: Results, stages: tuple[str, ...] | None) -> str:
    """`path` (full run, date; later re-runs; failed stages)[: the stages shown]."""
    what = {"quick": "quick run", "full": "full run"}.get(res.mode, res.mode or "run")
    when = [res.date or "date not recorded"]
    for u in res.updates:
        stages_u = ", ".join(map(str, u.get("stages", []))) or "some stages"
        when.append(f"{stages_u} re-run {u.get('date', '(date not recorded)')}")
    text = f"`{res.path}` ({what}, {'; '.join(when)})"
    if res.errors:
        text += f"; stages that failed: {', '.join(map(str, res.errors))}"
    if stages is not None:
        text += f": rows {', '.join(stages)}"
    return text


def select_rows(res: Results, stages: tuple[str, ...] | None) -> list[dict]:
    if stages is None:
        return list(res.rows)
    rows = [r for r in res.rows if r["stage"] in stages]
    if not rows:
        raise ResultsFileError(f"{res.path}: no row of stage {', '.join(stages)}")
    return rows


def render_block(parts: list[tuple[Results, tuple[str, ...] | None]]) -> str:
    """The generated text of one block: the table of the rows of every part, then where they come from."""
    rows = [r for res, stages in parts for r in select_rows(res, stages)]
    sources = [describe_source(res, stages) for res, stages in parts]
    label = "Source" if len(sources) == 1 else "Sources"
    return "\n".join([f"<!-- generated by `{GENERATOR}` from benchmarks/results/: edit those, not this table -->",
                      "", render_table(rows), "", f"{label}: " + "; ".join(sources) + ".",
                      "Ratio as each benchmark defines it (the notes in the source's .md say which way); met: the "
                      "ratio, or our figure where the target has a unit, against the target; peak MB: the stage "
                      "process's peak RSS."])


def markers(name: str) -> tuple[str, str]:
    return f"<!-- perf:{name}:start -->", f"<!-- perf:{name}:end -->"


def replace_block(text: str, name: str, body: str, where: str = "README.md") -> str:
    """`text` with what lies between block `name`'s markers replaced by `body` (a blank line either side);
    ResultsFileError naming `where` and the marker when a marker is missing, repeated or out of order."""
    start, end = markers(name)
    for m in (start, end):
        n = text.count(m)
        if n != 1:
            raise ResultsFileError(f"{where}: marker {m} {'not found' if n == 0 else f'found {n} times'}")
    i, j = text.index(start), text.index(end)
    if j < i:
        raise ResultsFileError(f"{where}: marker {end} comes before {start}")
    return text[:i + len(start)] + "\n\n" + body.strip("\n") + "\n\n" + text[j:]


def generate(readme: str, results: dict[str, Results], where: str = "README.md",
             blocks: tuple[Block, ...] = BLOCKS) -> str:
    """README text with every block regenerated from `results` (results file name relative to the results
    folder -> its Results)."""
    for block in blocks:
        parts = [(results[f], stages) for f, stages in block.sources]
        readme = replace_block(readme, block.name, render_block(parts), where)
    return readme


# ---------------------------------------------------------------- I/O edges

def load_all(results_dir: Path = RESULTS, blocks: tuple[Block, ...] = BLOCKS) -> dict[str, Results]:
    names = dict.fromkeys(f for b in blocks for f, _ in b.sources)
    return {f: load_results(results_dir / f) for f in names}


def expected_readme(readme: Path = README, results_dir: Path = RESULTS) -> tuple[str, str]:
    """(README.md as it is, README.md as the generator would write it)."""
    shown = display_path(readme)
    try:
        current = readme.read_text()
    except OSError as e:
        raise ResultsFileError(f"{shown}: cannot be read ({e.strerror})") from None
    return current, generate(current, load_all(results_dir), shown)


def readme_diff(readme: Path = README, results_dir: Path = RESULTS) -> str:
    """A unified diff from README.md to what the generator would write; "" when it is up to date."""
    current, new = expected_readme(readme, results_dir)
    shown = display_path(readme)
    return "".join(difflib.unified_diff(current.splitlines(keepends=True), new.splitlines(keepends=True),
                                        f"{shown} (committed)", f"{shown} (from benchmarks/results/)"))


def update_readme(readme: Path = README, results_dir: Path = RESULTS) -> bool:
    """Rewrite README.md's blocks (atomically); True when its text changed."""
    from reidkit.atomic import atomic_write_text

    current, new = expected_readme(readme, results_dir)
    if new == current:
        return False
    atomic_write_text(readme, new)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=GENERATOR, description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 with a diff when README.md is stale")
    p.add_argument("--readme", type=Path, default=README)
    p.add_argument("--results", type=Path, default=RESULTS, help="the results folder (benchmarks/results)")
    a = p.parse_args(argv)
    try:
        if a.check:
            diff = readme_diff(a.readme, a.results)
            if diff:
                sys.stdout.write(diff)
                print(f"{display_path(a.readme)} is not up to date with {display_path(a.results)}: "
                      f"run `{GENERATOR}`", file=sys.stderr)
                return 1
            return 0
        changed = update_readme(a.readme, a.results)
    except ReidError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{display_path(a.readme)}: performance tables {'rewritten' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
