"""`report`: the paper's Tables 6-11 transcribed (cross-checked between tables), our runs on the paper's rows,
markdown and PNG rendering, and the reversed-ordering flags - on run folders the tests write."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from reidtrain.paper_tables import TABLES
from reidtrain.tables import ReportError, build_table, collect_runs, render_markdown, reversals, write_table


def _run(folder: Path, model: str, metrics: dict, dataset: str = "market", lam: float | None = 0.5,
         beta: float | None = 5 / 48, **options) -> Path:
    """A run folder as train + evaluate leave it: config.json (resolved train config) and eval/metrics.json."""
    (folder / "eval").mkdir(parents=True)
    train = {"model": model, "model_options": {"lambda_intra": lam, **options} if lam is not None else options,
             "beta": beta, "cache": str(folder / "no-cache")}
    (folder / "config.json").write_text(json.dumps({"train": train, "meta": {}}))
    full = {"model": model, "dataset": dataset, "protocol": "market", "cmc": [0.5] * 20, **metrics}
    (folder / "eval" / "metrics.json").write_text(json.dumps(full))
    return folder


def _m(r1: float, map_: float, **rest) -> dict:
    return {"R1": r1, "mAP": map_, "R5": r1 + 5, "R10": r1 + 7, "R20": r1 + 9, **rest}


def test_paper_tables_agree_with_each_other():
    t6, t7, t8, t9, t10, t11 = (TABLES[n] for n in (6, 7, 8, 9, 10, 11))
    full = t6.rows["Intra+inter"]["market"]
    assert full == t10.rows["0.5"]["market"]
    assert full == {m: t11.rows["5H/48"]["market"][m] for m in ("R1", "mAP")}
    assert full == {m: t8.rows["With attention decomposition"]["market"][m] for m in ("R1", "mAP")}
    assert full == {m: t7.rows["Global+Part"]["with"][m] for m in ("R1", "mAP")}
    assert t6.rows["Intra+inter"]["duke"] == t10.rows["0.5"]["duke"]
    assert t6.rows["Intra+inter"]["duke"] == {m: t11.rows["5H/48"]["duke"][m] for m in ("R1", "mAP")}
    for ds in ("cuhk03-labeled", "cuhk03-detected"):
        assert t6.rows["Intra+inter"][ds] == t10.rows["0.5"][ds] and t6.rows["Intra+inter"][ds]["mAP"] is None
    inter = t6.rows["Inter"]["market"]
    assert inter == {m: t9.rows["Inter-attention"]["market"][m] for m in ("R1", "mAP")}
    assert inter == {m: t7.rows["Global+Part"]["without"][m] for m in ("R1", "mAP")}
    assert t6.rows["Aligned"]["market"] == {m: t9.rows["Concatenation"]["market"][m] for m in ("R1", "mAP")}
    assert list(t10.rows) == ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0"]
    assert list(t11.rows) == ["0", "H/48", "2H/48", "3H/48", "4H/48", "5H/48", "6H/48"]
    assert t6.rows["*Intra+inter"]["cuhk03-labeled"]["R1"] == 96.43 and t11.rows["3H/48"]["duke"]["mAP"] == 72.32


def test_table6_rows_paper_column_and_reversed_order(tmp_path):
    runs = collect_runs([
        _run(tmp_path / "baseline", "baseline", _m(40.0, 20.0)),
        _run(tmp_path / "aligned", "aligned", _m(55.0, 30.0)),      # above intra: reversed against the paper
        _run(tmp_path / "intra", "intra", _m(50.0, 35.0)),
        _run(tmp_path / "full", "intra-inter", _m(60.0, 40.0)),
        _run(tmp_path / "best", "intra-inter", _m(61.0, 41.0), lam=0.1, beta=3 / 48),
        _run(tmp_path / "duke-full", "intra-inter", _m(30.0, 15.0), dataset="duke"),
        _run(tmp_path / "lambda0", "intra-inter", _m(99.0, 99.0), lam=0.0),      # a Table 10 point: not on Table 6
    ])
    table = build_table(6, runs)
    rows = {r.label: r for r in table.rows}
    assert list(rows) == ["Baseline", "Aligned", "Intra", "Inter", "Intra+inter", "*Intra+inter"]
    assert rows["*Intra+inter"].runs == {"market": "best"} and rows["Intra+inter"].runs == {"market": "full",
                                                                                            "duke": "duke-full"}
    assert rows["Inter"].ours == {} and table.unused == ["lambda0"]
    flags = reversals(table)
    assert [(f.group, f.metric, f.above, f.below) for f in flags] == [("market", "R1", "Intra", "Aligned")]
    assert flags[0].paper == (92.04, 89.98) and flags[0].ours == (50.0, 55.0)
    md = render_markdown(table)
    assert "| Aligned | 55.00 | 89.98 | 30.00 | 72.46 | - | 76.71 | - | 60.67 | - | 89.15 | - | 84.47 " \
           "| aligned | ! 1 |" in md   # no CUHK03 mAP columns: neither the paper nor we have one
    assert "| Intra+inter | 60.00 | 94.65 | 40.00 | 85.22 | 30.00 | 84.78 | 15.00 | 71.92 |" in md
    assert "Market-1501 R1: paper Intra 92.04 > Aligned 89.98; ours Intra 50.00 < Aligned 55.00" in md
    assert "## Reversed orderings (1)" in md


def test_two_runs_on_one_row_each_get_a_row_and_overrides_move_runs(tmp_path):
    runs = collect_runs([_run(tmp_path / "aligned", "aligned", _m(55.0, 30.0)),
                         _run(tmp_path / "aligned-paper", "aligned-paper", _m(52.0, 29.0), fused_loss=False),
                         _run(tmp_path / "mine", "my-model", _m(70.0, 50.0))])
    table = build_table(6, runs)
    labels = [r.label for r in table.rows]
    assert labels[1:3] == ["Aligned", "Aligned [aligned-paper]"] and table.unused == ["mine"]
    assert table.rows[2].paper_row == "Aligned" and "runs on no row of table 6: mine" in render_markdown(table)
    moved = build_table(6, runs, {"mine": "Inter"})
    assert next(r for r in moved.rows if r.label == "Inter").ours["market"]["R1"] == 70.0
    with pytest.raises(ReportError, match="no row 'Nope'"):
        build_table(6, runs, {"mine": "Nope"})
    with pytest.raises(ReportError, match="ghost"):
        build_table(6, runs, {"ghost": "Inter"})
    t9 = build_table(9, runs)    # Table 9's concatenation row is the paper's aligned (no fused loss)
    assert next(r for r in t9.rows if r.label == "Concatenation").runs == {"market": "aligned-paper"}


def test_sweep_output_folder_fills_tables_10_and_11_and_writes_png(tmp_path):
    out = tmp_path / "out"
    for lam, r1 in ((0.0, 30.0), (0.1, 45.0), (1.0, 50.0)):     # 1.0 above 0.1: reversed against the paper
        _run(out / "runs" / f"intra-inter@lambda={lam:g}", "intra-inter", _m(r1, r1 / 2), lam=lam)
    (out / "runs" / "unfinished").mkdir()                       # no evaluation: not a run of the table
    runs = collect_runs([out])
    assert [r.name for r in runs] == ["intra-inter@lambda=0", "intra-inter@lambda=0.1", "intra-inter@lambda=1"]
    table, files = write_table(10, runs, out / "tables")
    assert [f.name for f in files] == ["table10.md", "table10.png"]
    filled = {r.label: r.ours["market"]["R1"] for r in table.rows if r.ours}
    assert filled == {"0": 30.0, "0.1": 45.0, "1.0": 50.0}
    assert {(f.metric, f.above, f.below) for f in reversals(table)} == {("R1", "0.1", "1.0"), ("mAP", "0.1", "1.0")}
    png = np.asarray(Image.open(files[1]).convert("RGB"))
    assert png.shape[0] > 200 and png.shape[1] > 400
    assert ((png[..., 0] > 230) & (png[..., 1] < 215) & (png[..., 2] < 215)).sum() > 100   # red reversed cells
    for beta, r1 in ((0.0, 20.0), (3 / 48, 25.0), (0.1, 99.0)):   # 0.1 = 4.8H/48: no row of Table 11
        _run(tmp_path / "b" / f"b{beta:g}", "intra-inter", _m(r1, r1), beta=beta)
    t11 = build_table(11, collect_runs([tmp_path / "b" / f"b{b:g}" for b in (0.0, 3 / 48, 0.1)]))
    assert {r.label: r.runs for r in t11.rows if r.runs} == {"0": {"market": "b0"}, "3H/48": {"market": "b0.0625"}}
    assert t11.unused == ["b0.1"] and reversals(t11) == []
    assert "None: wherever both have values" in render_markdown(t11)
    t10 = build_table(10, collect_runs([tmp_path / "b" / "b0.0625"]))    # lambda 0.5 at beta 3H/48, not 5H/48
    assert [r.label for r in t10.rows if r.runs] == [] and t10.unused == ["b0.0625"]
    assert t10.notes == ["table 10 holds beta at 5H/48: runs at other values (or other models) take no row"]
    _run(tmp_path / "c" / "lam1", "intra-inter", _m(1.0, 1.0), lam=1.0, beta=3 / 48)
    assert build_table(11, collect_runs([tmp_path / "c" / "lam1"])).unused == ["lam1"]   # Table 11: lambda 0.5
    assert build_table(10, collect_runs([tmp_path / "c" / "lam1"], ), {"lam1": "1.0"}).rows[-1].runs == {
        "market": "lam1"}                                                                 # unless --row puts it


def test_table7_from_per_branch_results(tmp_path):
    labels = ("global", "head", "upper_body", "upper_leg", "lower_leg", "part_fusion", "global_part")
    with_intra = {k: _m(60.0 - i, 30.0 - i) for i, k in enumerate(labels)}
    with_intra["global_part"] = _m(70.0, 40.0)
    without = {k: _m(50.0 - i, 25.0 - i) for i, k in enumerate(labels)}
    runs = collect_runs([_run(tmp_path / "ii", "intra-inter", _m(70.0, 40.0, branches=with_intra)),
                         _run(tmp_path / "inter", "inter", _m(44.0, 19.0, branches=without))])
    table = build_table(7, runs)
    rows = {r.label: r for r in table.rows}
    assert rows["Head"].ours["with"]["R1"] == 59.0 and rows["Head"].ours["without"]["mAP"] == 24.0
    assert rows["Global+Part"].runs == {"with": "ii", "without": "inter"}
    # ours: Global > Part Fusion (60 > 55), the paper: Part Fusion > Global (91.62 > 90.11)
    assert any(f.above == "Part Fusion" and f.below == "Global" and f.group == "with" for f in reversals(table))


def test_report_command_writes_the_tables(tmp_path):
    import cli

    out = tmp_path / "out"
    _run(out / "runs" / "intra-inter-joint", "intra-inter-joint", _m(40.0, 20.0))
    _run(out / "runs" / "intra-inter", "intra-inter", _m(45.0, 22.0))
    result = CliRunner().invoke(cli.app, ["report", "8", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "tables" / "table8.md").read_text()
    assert "| Without attention decomposition | 40.00 | 93.26 |" in md and (out / "tables" / "table8.png").is_file()
    result = CliRunner().invoke(cli.app, ["report", "all", str(out), "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    # intra-inter at lambda 0.5, beta 5H/48 is also a row of Tables 6, 10 and 11; nothing maps onto 7 and 9
    assert sorted(p.stem for p in (tmp_path / "t").glob("*.png")) == ["table10", "table11", "table6", "table8"]
    assert sorted(p.stem for p in (tmp_path / "t").glob("*.md")) == ["table10", "table11", "table6", "table8"]
    result = CliRunner().invoke(cli.app, ["report", "12", str(out)])
    assert result.exit_code == 1 and "unknown table" in result.output
    result = CliRunner().invoke(cli.app, ["report", "6", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "no such run folder" in result.output


def test_report_row_option_splits_at_the_last_equals_sign(tmp_path):
    import cli

    _run(tmp_path / "runs" / "x@lambda=0.1", "my-model", _m(40.0, 20.0))
    result = CliRunner().invoke(cli.app, ["report", "9", str(tmp_path), "--row", "x@lambda=0.1=FC fusion"])
    assert result.exit_code == 0, result.output
    assert "| FC fusion | 40.00 | 90.94 |" in (tmp_path / "tables" / "table9.md").read_text()
    result = CliRunner().invoke(cli.app, ["report", "9", str(tmp_path), "--row", "nothing"])
    assert result.exit_code == 1 and "RUN=ROW" in result.output
