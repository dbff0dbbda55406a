"""README's performance tables (benchmarks/readme_tables.py): target parsing, rendering, marker replacement, the
CLI's errors, and that the committed README.md is what the generator makes of the committed result files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import readme_tables as rt

REPO = Path(__file__).resolve().parents[1]


def row(**kw) -> dict:
    base = {"stage": "s", "ours": "ours thing", "ours_value": 10.0, "reference": "ref thing", "reference_value": 5.0,
            "unit": "img/s", "ratio": 2.0, "target": "-", "peak_mem_mb": 300.0}
    base.update(kw)
    return base


# ---------------------------------------------------------------- targets

@pytest.mark.parametrize("text, expected", [
    (">= 5", rt.Target(">=", 5.0)),
    ("<= 0.1", rt.Target("<=", 0.1)),
    (">= 0.67 (within 1.5x)", rt.Target(">=", 0.67)),
    ("2", rt.Target(">=", 2.0)),
    (2.0, rt.Target(">=", 2.0)),
    (">= 10x", rt.Target(">=", 10.0)),
    (">= 100 img/s (2 cores)", rt.Target(">=", 100.0, "img/s")),
    ("completes", rt.Target("completes")),
    ("-", None), ("", None), (None, None), ("faster than before", None),
])
def test_parse_target(text, expected):
    assert rt.parse_target(text) == expected


@pytest.mark.parametrize("target, ratio, ours, met", [
    (">= 5", 8.63, 1.0, True),
    (">= 5", 4.99, 1.0, False),
    ("<= 0.1", 0.108, 1.0, False),
    ("<= 0.1", 0.09, 1.0, True),
    (">= 0.67 (within 1.5x)", 0.724, 1.0, True),
    (">= 0.67 (within 1.5x)", 0.661, 1.0, False),
    (2.0, 1.9, 1.0, False),
    ("2", 2.0, 1.0, True),
    # a target with a unit bounds our own figure, not the ratio
    (">= 100 img/s (2 cores)", 3.9, 119.9, True),
    (">= 100 img/s (2 cores)", 3.9, 94.0, False),
    ("completes", None, 693.9, True),
    ("completes", None, None, False),
    ("-", 100.0, 1.0, None),
    ("faster than before", 100.0, 1.0, None),
])
def test_target_met(target, ratio, ours, met):
    r = row(target=target, ratio=ratio, ours_value=ours)
    assert rt.target_met(r, rt.parse_target(target)) is met


def test_target_met_unknown_when_figure_or_unit_missing():
    assert rt.target_met(row(ratio=None), rt.parse_target(">= 5")) is None
    assert rt.target_met(row(unit="MB", ours_value=120.0), rt.parse_target(">= 100 img/s")) is None


@pytest.mark.parametrize("v, text", [(1241.8, "1,242"), (174.5, "175"), (93.98, "94"), (8.63, "8.63"),
                                     (0.1083, "0.108"), (13.2, "13.2"), (2.6e-8, "2.6e-08"), (None, "-"),
                                     (0, "0"), (24576, "24,576"), ("n/a", "n/a")])
def test_fmt_num(v, text):
    assert rt.fmt_num(v) == text


# ---------------------------------------------------------------- rendering

SUITE = {"meta": {"mode": "full", "date": "2030-01-02 03:04", "errors": {},
                  "partial_updates": [{"stages": ["rerank"], "date": "2030-01-05 06:07"}]},
         "rows": [row(stage="eval", ours="evaluate_market", ours_value=1241.8, reference="torchreid eval",
                      reference_value=13.2, unit="queries/s", ratio=93.98, target=">= 10",
                      notes="x; max |CMC diff| (ranks 1-50) 2.6e-08 (float32), |mAP diff| 1.4e-06; 3 queries have "
                            "a true match at exactly the float32 distance"),
                  row(stage="rerank", ours="rerank peak | RSS", ours_value=928.0, reference="torchreid peak",
                      reference_value=8622.6, unit="MB", ratio=0.108, target="<= 0.1", peak_mem_mb=8622.6),
                  row(stage="model", ours="train step", ours_value=1.342, reference="ResNet-50", reference_value=0.7,
                      ratio=1.9, target=2.0, peak_mem_mb=None)]}


def table_lines(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in text.splitlines() if line.startswith("| ")]


def test_render_block_rows_and_source():
    res = rt.parse_results(SUITE, "benchmarks/results/x.json")
    text = rt.render_block([(res, None)])
    head, *rows = table_lines(text)
    assert head == ["what", "ours", "reference", "ratio", "target", "met", "peak MB", "agreement"]
    assert rows[0] == ["`eval` evaluate_market", "1,242 queries/s", "torchreid eval: 13.2 queries/s", "94", ">= 10",
                       "yes", "300", "CMC max diff 2.6e-08, mAP diff 1.4e-06, 3 tied queries"]
    assert rows[1][0] == "`rerank` rerank peak \\| RSS"     # a pipe in the text does not split the cell
    assert rows[1][1:7] == ["928 MB", "torchreid peak: 8,623 MB", "0.108", "<= 0.1", "**no**", "8,623"]
    assert rows[2][4:7] == [">= 2", "**no**", "-"]
    assert "Source: `benchmarks/results/x.json` (full run, 2030-01-02 03:04; rerank re-run 2030-01-05 06:07)." in text


def test_render_block_several_sources_and_selected_stages():
    suite = rt.parse_results(SUITE, "a/results.json")
    one = rt.parse_results({"quick": False, "date": "2030-02-02 00:00", "row": row(stage="crop", total_seconds=82.3)},
                           "a/crop.json")
    text = rt.render_block([(one, None), (suite, ("model",))])
    rows = table_lines(text)[1:]
    assert [r[0].split()[0] for r in rows] == ["`crop`", "`model`"]
    assert rows[0][1] == "10 img/s (82.3 s in all)"
    assert "Sources: `a/crop.json` (full run, 2030-02-02 00:00); `a/results.json` (full run" in text
    assert text.rstrip().splitlines()[-2].endswith(": rows model.")
    with pytest.raises(rt.ResultsFileError, match=r"^a/results.json: no row of stage flip$"):
        rt.render_block([(suite, ("flip",))])


def test_table_without_agreement_column_when_no_notes_state_one():
    res = rt.parse_results({"quick": True, "rows": [row()]}, "b.json")
    text = rt.render_block([(res, None)])
    assert table_lines(text)[0][-1] == "peak MB"
    assert "(quick run, date not recorded)" in text


@pytest.mark.parametrize("data, message", [
    ({"quick": True}, "missing key 'rows'"),
    ([1, 2], "expected a JSON object, found list"),
    ({"rows": {"a": 1}}, "'rows' is dict, not a list"),
    ({"rows": [row(), "x"]}, "row 1 is str, not an object"),
    ({"rows": [{"stage": "eval", "ours": "o", "unit": "s"}]}, "row 0 (eval) missing key 'ours_value'"),
    ({"meta": {"mode": "quick"}, "rows": []}, "missing key 'meta.date'"),
])
def test_parse_results_errors_name_the_file(data, message):
    with pytest.raises(rt.ResultsFileError) as e:
        rt.parse_results(data, "benchmarks/results/blazepose.json")
    assert str(e.value) == f"benchmarks/results/blazepose.json: {message}"


def test_load_results_missing_and_malformed_files(tmp_path):
    with pytest.raises(rt.ResultsFileError, match=r"gone\.json: not found"):
        rt.load_results(tmp_path / "gone.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(rt.ResultsFileError, match=r"bad\.json: not valid JSON"):
        rt.load_results(tmp_path / "bad.json")


# ---------------------------------------------------------------- markers

def test_replace_block_keeps_text_outside_markers():
    text = "# T\n\nbefore\n<!-- perf:a:start -->\nold table\n<!-- perf:a:end -->\nafter\n"
    new = rt.replace_block(text, "a", "NEW\n")
    assert new == "# T\n\nbefore\n<!-- perf:a:start -->\n\nNEW\n\n<!-- perf:a:end -->\nafter\n"
    assert rt.replace_block(new, "a", "NEW") == new      # idempotent


@pytest.mark.parametrize("text, message", [
    ("x\n<!-- perf:a:end -->\n", "README.md: marker <!-- perf:a:start --> not found"),
    ("<!-- perf:a:start -->\nx\n", "README.md: marker <!-- perf:a:end --> not found"),
    ("<!-- perf:a:end -->\n<!-- perf:a:start -->\n", "README.md: marker <!-- perf:a:end --> comes before"),
    ("<!-- perf:a:start --><!-- perf:a:start --><!-- perf:a:end -->", "marker <!-- perf:a:start --> found 2 times"),
])
def test_replace_block_marker_errors(text, message):
    with pytest.raises(rt.ResultsFileError) as e:
        rt.replace_block(text, "a", "body")
    assert message in str(e.value)


def write_results(folder: Path) -> None:
    (folder / "eval-full").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"meta": {"mode": "quick", "date": "d1"},
                                                     "rows": [row(stage="pose-mmpose"), row(stage="loader")]}))
    (folder / "eval-full" / "results.json").write_text(json.dumps({"meta": {"mode": "full", "date": "d2"},
                                                                   "rows": [row(stage="eval")]}))
    (folder / "blazepose.json").write_text(json.dumps({"quick": False, "rows": [row(stage="blazepose-1core")]}))
    (folder / "crop_market.json").write_text(json.dumps({"quick": False, "date": "d3",
                                                         "row": row(stage="crop-market-scale")}))


def test_cli_writes_then_check_passes_and_detects_drift(tmp_path, capsys):
    results = tmp_path / "results"
    write_results(results)
    readme = tmp_path / "README.md"
    blocks = "".join(f"## {b.name}\n<!-- perf:{b.name}:start -->\n<!-- perf:{b.name}:end -->\nprose\n"
                     for b in rt.BLOCKS)
    readme.write_text("# top\n" + blocks)
    args = ["--readme", str(readme), "--results", str(results)]
    assert rt.main(["--check", *args]) == 1                  # stale: empty blocks
    assert "+| `eval` ours thing" in capsys.readouterr().out
    assert readme.read_text() == "# top\n" + blocks           # --check wrote nothing
    assert rt.main(args) == 0
    written = readme.read_text()
    assert written.startswith("# top\n## pose-crop\n") and written.count("prose\n") == 3
    assert "`blazepose-1core`" in written and "`crop-market-scale`" in written and "`pose-mmpose`" in written
    assert rt.main(["--check", *args]) == 0
    # a new figure in a results file makes the README stale again
    data = json.loads((results / "eval-full" / "results.json").read_text())
    data["rows"][0]["ours_value"] = 777.0
    (results / "eval-full" / "results.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert rt.main(["--check", *args]) == 1
    out = capsys.readouterr().out
    assert "-| `eval` ours thing | 10 img/s" in out and "+| `eval` ours thing | 777 img/s" in out


def test_cli_names_missing_file_and_marker(tmp_path, capsys):
    results = tmp_path / "results"
    write_results(results)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- perf:pose-crop:start -->\n<!-- perf:pose-crop:end -->\n")
    assert rt.main(["--readme", str(readme), "--results", str(results)]) == 2
    assert "README.md: marker <!-- perf:eval-rerank:start --> not found" in capsys.readouterr().err
    (results / "blazepose.json").unlink()
    assert rt.main(["--readme", str(readme), "--results", str(results)]) == 2
    assert "blazepose.json: not found" in capsys.readouterr().err
    assert readme.read_text() == "<!-- perf:pose-crop:start -->\n<!-- perf:pose-crop:end -->\n"


def test_committed_readme_is_up_to_date_with_committed_results():
    """README.md's performance tables are exactly what benchmarks/results/ make: rerun
    `python -m benchmarks.readme_tables` after a benchmark writes new figures."""
    diff = rt.readme_diff(REPO / "README.md", REPO / "benchmarks" / "results")
    assert diff == "", "README.md is stale; run `python -m benchmarks.readme_tables`:\n" + diff[:4000]
