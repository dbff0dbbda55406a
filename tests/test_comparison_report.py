"""The comparison report (reidtrain.comparison, `cli.py compare`): rows from real tiny runs (train 1 epoch +
evaluate on a written cache), parameters / MACs at the trained sizes, img/s from metrics.jsonl, the papers'
reported figures, the markdown, and the ranked-list picture with one row per model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import faultkit as fk
from reidtrain.comparison import (ComparisonError, comparison_rows, plot_ranked_rows, recipe_runs, render_markdown,
                                  training_speed, write_comparison)
from reidtrain.config import EvalConfig, TrainConfig
from reidtrain.evaluate import evaluate
from reidtrain.model.complexity import count
from reidtrain.model.registry import build_model, get_model
from reidtrain.train import train
from test_data import write_tiny_cache

pytestmark = pytest.mark.usefixtures("one_thread")
MODELS = ("baseline", "hacnn")
SIZE = (32, 16)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """A recipe-like output folder: OUT/cache, OUT/runs/<model> trained 1 epoch and evaluated, recipe-effective."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("compare")
    cache = write_tiny_cache(root / "cache", train_ids=3, per_id=4)
    for model in MODELS:
        run = root / "runs" / model
        train(TrainConfig(cache=cache, out=run, model=model, body_size=SIZE, part_size=(8, 16), epochs=1,
                          batch_size=4, workers=0, tensorboard=False, device="cpu"), progress=False)
        evaluate(EvalConfig(checkpoint=run / "model.pt", cache=cache, out=run / "eval", workers=0, device="cpu",
                            ranked_queries=2, attention_samples=0), progress=False)
    # the recipe lists hacnn first: the table follows the recipe's order, not the folder names
    (root / "recipe-effective.json").write_text(json.dumps({"recipe": {"name": "tiny-compare",
                                                                       "description": "two tiny models"},
                                                            "model": {"names": ["hacnn", "baseline"]}}))
    return root


def test_rows_measure_the_trained_models_at_their_trained_sizes(out):
    runs = recipe_runs(out)
    assert [p.name for p in runs] == ["hacnn", "baseline"]
    rows = {r.model: r for r in comparison_rows(runs)}
    for model in MODELS:
        run = out / "runs" / model
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        row = rows[model]
        assert row.metrics["R1"] == pytest.approx(metrics["R1"]) and row.metrics["mAP"] == pytest.approx(metrics["mAP"])
        assert set(row.metrics) <= {"R1", "R5", "R10", "mAP", "mINP"} and "R20" not in row.metrics
        speeds = [json.loads(line)["images_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert row.images_per_s == pytest.approx(float(np.median(speeds)))
        assert (row.dataset, row.epochs) == ("market", 1)
        # the parameters and MACs are those of the model at the trained sizes, not at its defaults
        net = build_model(model, 3, SIZE, (8, 16))
        ours = count(net, net.example_inputs(1), group_of=net.complexity_group)
        assert row.params_m == pytest.approx(ours.params_without_classifiers / 1e6)
        assert row.macs_g == pytest.approx(ours.macs / 1e9)
        default = build_model(model, 3)
        assert row.macs_g < count(default, default.example_inputs(1)).macs / 1e9
    assert rows["hacnn"].inputs == "32x16"
    assert rows["baseline"].inputs.startswith("32x16")
    # beside them the papers' own figures on the run's dataset (the tiny cache says market)
    assert (rows["hacnn"].paper_dataset, rows["hacnn"].paper) == ("market", {"R1": 91.2, "mAP": 75.7})
    assert rows["baseline"].paper == {"R1": 86.63, "mAP": 66.25}
    assert rows["hacnn"].paper_params_m == 2.7


def test_markdown_json_and_ranked_picture_are_written(out):
    rows, files = write_comparison(out)
    names = [f.name for f in files]
    assert names == ["comparison.md", "comparison.json", "comparison_ranked.png"]
    text = (out / "comparison.md").read_text()
    assert text.startswith("# tiny-compare: model comparison") and "two tiny models" in text
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    for col in ("R1", "R5", "R10", "mAP", "params M", "GMACs", "train img/s", "paper R1", "paper mAP"):
        assert f" {col} |" in header
    hacnn = next(line for line in text.splitlines() if line.startswith("| hacnn |"))
    cells = [c.strip() for c in hacnn.strip("|").split("|")]
    assert f"{rows[0].metrics['R1']:.2f}" in cells and "91.20" in cells and "75.70" in cells
    assert text.index("| hacnn |") < text.index("| baseline |")
    saved = json.loads((out / "comparison.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["hacnn", "baseline"]
    # one row of ranked lists per model below the row of queries: a third model makes the picture taller
    with Image.open(out / "comparison_ranked.png") as two:
        size_two = two.size
    only_one = write_comparison(out, [out / "runs" / "hacnn"], title="one")[1][-1]
    with Image.open(only_one) as one:
        assert one.size[1] < size_two[1] and one.size[0] == pytest.approx(size_two[0], rel=0.25)


def test_plot_ranked_rows_frames_right_and_wrong_matches(tmp_path):
    red, blue = np.zeros((32, 16, 3), np.uint8), np.zeros((32, 16, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 200
    path = plot_ranked_rows([blue], {"a": [[red, red]], "b": [[red, None]]}, {"a": [[True, False]], "b": [[False]]},
                            tmp_path / "r.png")
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    green = (abs(img - [0x1a, 0x9e, 0x3a]).sum(axis=2) < 30).sum()
    wrong = (abs(img - [0xd6, 0x27, 0x28]).sum(axis=2) < 30).sum()
    assert green > 0 and wrong > green    # one right match framed green, two wrong ones red
    with pytest.raises(ValueError, match="ranked lists"):
        plot_ranked_rows([blue, blue], {"a": [[red]]}, {"a": [[True]]}, tmp_path / "x.png")


def test_training_speed_is_the_median_over_epochs(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"epoch": i, "images_per_s": v}) + "\n" for i, v in enumerate((10, 40, 20))))
    assert training_speed(path) == 20
    assert training_speed(tmp_path / "none.jsonl") is None
    path.write_text('{"epoch": 1}\n{oops\n')
    with pytest.raises(ComparisonError, match="line 2"):
        training_speed(path)


def test_a_run_without_evaluation_is_named(out, tmp_path):
    run = tmp_path / "runs" / "hacnn"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes((out / "runs" / "hacnn" / "model.pt").read_bytes())
    with pytest.raises(ComparisonError, match=r"eval.metrics\.json: not found"):
        comparison_rows([run])
    with pytest.raises(ComparisonError, match="no trained and evaluated run"):
        write_comparison(tmp_path)


def test_render_markdown_leaves_missing_figures_blank(out):
    rows = comparison_rows([out / "runs" / "hacnn"])
    rows[0].paper, rows[0].paper_dataset, rows[0].images_per_s = {}, None, None
    line = next(x for x in render_markdown(rows, "t").splitlines() if x.startswith("| hacnn"))
    assert line.count("| - ") >= 6


def test_papers_report_their_market_figures():
    reported = {m: get_model(m).paper.reported.get("market", {}) for m in
                ("hacnn", "apnet-c", "resnet50", "intra-inter", "hpnet")}
    assert reported["hacnn"] == {"R1": 91.2, "mAP": 75.7}
    assert reported["apnet-c"] == {"R1": 96.2, "mAP": 90.5}
    assert reported["resnet50"] == {"R1": 94.1, "mAP": 85.7}
    assert reported["intra-inter"]["R1"] == 94.99 and reported["intra-inter"]["mAP"] == 86.47
    assert reported["hpnet"]["R1"] == 76.9 and "mAP" not in reported["hpnet"]


@pytest.mark.slow
def test_compare_command_prints_the_table(out):
    r = fk.cli("compare", out, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "hacnn" in r.stdout and "comparison.md" in r.stdout
    bad = fk.cli("compare", out / "nowhere", timeout=120)
    assert bad.returncode == 1 and "no trained and evaluated run" in bad.stderr


@pytest.mark.parametrize("name, dataset", [("compare-synth", "market"), ("compare-cuhk01", "cuhk01")])
def test_compare_recipes_train_every_model_at_the_small_sizes(tmp_path, name, dataset):
    from reidtrain.model.registry import list_models
    from pipelines.runner import load_recipe, plan_configs
    from reidtrain.resolve import resolve

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "pipelines" / f"{name}.toml")
    assert recipe.dataset.name == dataset
    comparison = {"hacnn", "hpnet", "resnet50", "apnet-c", "apnet-s", "baseline", "intra-inter"}
    assert comparison <= set(recipe.models)
    if recipe.synth is not None:
        # every built-in model but the Table 6-9 ablation variants (the ablation recipes train those)
        builtin = {m for m in list_models() if get_model(m).module.startswith("reidtrain.model.")
                   and not m.endswith(("-paper", "-fc", "-joint"))}
        assert set(recipe.models) == builtin
    else:
        assert recipe.crop["pose_source"] == "blazepose" and recipe.eval["protocol"] == "cuhk01-single-shot"
    _, crop, trains, _ = plan_configs(recipe, tmp_path)
    body = tuple(recipe.train["body_size"])
    for model, cfg in trains.items():
        resolved = resolve(cfg)
        assert all(tuple(s.size) == body for s in resolved.inputs.values() if s.group == "body"), model
        assert max(s.size[0] for s in resolved.inputs.values()) <= 64, model   # CPU-sized, not the papers' 384
    assert trains["hpnet"].model_options["stage"] == "joint"
