"""Sweep recipes (Tables 10-11): the expansion of a [sweep] table, its checks, the configs of every point, the
shipped sweep recipes, and a real run of a lambda and a beta sweep on one crop cache."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reidkit.typedconfig import ConfigError
from pipelines.runner import RecipeError, load_recipe, plan_configs, run_recipe
from reidtrain.sweep import SweepPoint, check_sweep, expand_sweep

REPO = Path(__file__).resolve().parents[1]

TINY = """
[recipe]
name = "tiny-sweep"

[dataset]
name = "market"

[synth]
preset = "tiny"

[crop]
beta = 0.10416666666666667    # 5H/48: Table 10 holds beta there
body_size = [64, 32]
part_size = [16, 32]
workers = 0

[model]
names = ["intra-inter"]

[train]
epochs = 1
batch_size = 4
workers = 0
threads = 1
tensorboard = false

[eval]
workers = 0
threads = 1
attention_samples = 0
ranked_queries = 0
"""


def test_expansion_names_and_overrides_every_point_in_order():
    assert expand_sweep({}) == [SweepPoint("", {})] and expand_sweep(None)[0].run_name("intra") == "intra"
    points = expand_sweep({"lambda_intra": [0.0, 0.1, 1.0]})
    assert [p.name for p in points] == ["lambda=0", "lambda=0.1", "lambda=1"]
    assert [p.overrides for p in points] == [{"lambda_intra": 0.0}, {"lambda_intra": 0.1}, {"lambda_intra": 1.0}]
    assert points[1].run_name("intra-inter") == "intra-inter@lambda=0.1"
    both = expand_sweep({"lambda_intra": [0.1, 0.2], "beta": [0.0, 5 / 48]})
    assert [p.name for p in both] == ["lambda=0.1,beta=0", "lambda=0.1,beta=0.104167", "lambda=0.2,beta=0",
                                      "lambda=0.2,beta=0.104167"]
    assert both[1].overrides == {"lambda_intra": 0.1, "beta": 5 / 48}


@pytest.mark.parametrize("table, named", [
    ({"lambda": [0.1]}, "sweep.lambda"),
    ({"out": ["a", "b"]}, "sweep.out"),
    ({"beta": []}, "sweep.beta"),
    ({"beta": 0.1}, "sweep.beta"),
    ({"beta": [0.1, 1.5]}, "sweep.beta = 1.5"),
    ({"lambda_intra": [-1.0]}, "sweep.lambda_intra"),
    ({"beta": [0.1, 0.1000000001]}, "distinct"),
])
def test_bad_sweeps_are_named(table, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        check_sweep(table)


def test_recipe_plans_one_run_per_model_and_point_on_one_cache(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(TINY.replace('names = ["intra-inter"]', 'names = ["intra", "intra-inter"]')
                    + "\n[sweep]\nbeta = [0.0, 0.125]\n")
    recipe = load_recipe(path)
    _, crop, trains, evals = plan_configs(recipe, tmp_path / "out")
    assert list(trains) == ["intra@beta=0", "intra@beta=0.125", "intra-inter@beta=0", "intra-inter@beta=0.125"]
    assert trains["intra-inter@beta=0.125"].beta == 0.125 and trains["intra@beta=0"].beta == 0.0
    assert trains["intra@beta=0"].out == tmp_path / "out" / "runs" / "intra@beta=0"
    run = tmp_path / "out" / "runs" / "intra-inter@beta=0.125"
    point = evals["intra-inter@beta=0.125"]
    assert point.checkpoint == run / "model.pt" and point.out == run / "eval"
    assert {t.cache for t in trains.values()} == {crop.out}
    path.write_text(TINY + "\n[sweep]\nlambda = [0.1]\n")
    with pytest.raises(RecipeError, match=r"sweep\.lambda"):
        load_recipe(path)


def test_shipped_sweep_recipes_are_tables_10_and_11():
    for name in ("market", "duke", "cuhk03-labeled", "cuhk03-detected"):
        r = load_recipe(REPO / "pipelines" / f"table10-{name}.toml")
        assert r.sweep == {"lambda_intra": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}
        assert r.crop["beta"] == pytest.approx(5 / 48) and r.dataset.name == name and r.models == ["intra-inter"]
    for name in ("market", "duke"):
        r = load_recipe(REPO / "pipelines" / f"table11-{name}.toml")
        assert r.sweep["beta"] == pytest.approx([k / 48 for k in range(7)])
        assert r.train["lambda_intra"] == 0.5 and r.dataset.name == name


@pytest.mark.slow
def test_lambda_then_beta_sweep_run_on_one_crop(tmp_path, one_thread):
    out = tmp_path / "out"
    path = tmp_path / "lam.toml"
    path.write_text(TINY + "\n[sweep]\nlambda_intra = [0.0, 1.0]\n")
    first = run_recipe(load_recipe(path), out, progress=False)
    assert first.stages == {"synth": "ran", "crop": "ran", "train/intra-inter@lambda=0": "ran",
                            "train/intra-inter@lambda=1": "ran", "eval/intra-inter@lambda=0": "ran",
                            "eval/intra-inter@lambda=1": "ran"}
    assert list(first.results) == ["intra-inter@lambda=0", "intra-inter@lambda=1"]
    md = (out / "results.md").read_text()
    assert "| intra-inter@lambda=0 |" in md and "| intra-inter@lambda=1 |" in md
    for run, lam in (("intra-inter@lambda=0", 0.0), ("intra-inter@lambda=1", 1.0)):
        cfg = json.loads((out / "runs" / run / "config.json").read_text())["train"]
        assert cfg["model_options"]["lambda_intra"] == lam
    assert json.loads((out / "results.json").read_text())["sweep"] == {"lambda_intra": [0.0, 1.0]}
    # the report places the points on Table 10's rows (lambda from each run's config.json, dataset from metrics)
    from reidtrain.tables import collect_runs, write_table
    table, files = write_table(10, collect_runs([out]), out / "tables")
    assert {r.label: r.runs for r in table.rows if r.runs} == {"0": {"market": "intra-inter@lambda=0"},
                                                               "1.0": {"market": "intra-inter@lambda=1"}}
    assert all(f.is_file() for f in files)
    # the beta sweep reuses the synthetic data and the crop cache (same [crop]), trains and evaluates per beta
    path.write_text(TINY + "\n[sweep]\nbeta = [0.0, 0.125]\n")
    second = run_recipe(load_recipe(path), out, progress=False)
    assert second.stages["synth"] == "skipped" and second.stages["crop"] == "skipped"
    assert second.stages["train/intra-inter@beta=0.125"] == "ran"
    cfg = json.loads((out / "runs" / "intra-inter@beta=0.125" / "config.json").read_text())["train"]
    assert cfg["beta"] == 0.125
    t11, _ = write_table(11, collect_runs([out]), out / "tables")    # the lambda runs are not at Table 11's 0.5
    assert {r.label: r.runs for r in t11.rows if r.runs} == {"0": {"market": "intra-inter@beta=0"},
                                                             "6H/48": {"market": "intra-inter@beta=0.125"}}
    assert sorted(t11.unused) == ["intra-inter@lambda=0", "intra-inter@lambda=1"]
