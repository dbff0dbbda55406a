"""Recipes: checking (unknown keys / wrong types named), the shipped pipelines, and a real end-to-end run
(synth -> crop -> train -> evaluate) that skips up-to-date stages, plus extract / export of its model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.runner import RecipeError, load_recipe, run_recipe

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"

TINY = """
[recipe]
name = "tiny"
jobs = 2

[dataset]
name = "market"

[synth]
preset = "tiny"

[crop]
body_size = [64, 32]
part_size = [16, 32]
workers = 0

[model]
names = ["baseline", "intra-inter"]

[train]
epochs = 1
batch_size = 4
workers = 0
tensorboard = false

[eval]
workers = 0
attention_samples = 1
ranked_queries = 2
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("edit, named", [
    ("[train]\nepochs = 1\nfoo = 3\n", "train.foo"),
    ("[train]\nepochs = 'ten'\n", "train.epochs"),
    ("[train]\naugment = { flip = 1 }\n", "train.augment.flip"),
    ("[eval]\ndistance = 'manhattan'\n", "eval.distance"),
    ("[crop]\nbeta = 'wide'\n", "crop.beta"),
    ("[crop]\nout = 'x'\n", "crop.out"),
    ("[train]\ncache = 'x'\n", "train.cache"),
    ("[model]\nnames = ['resnet']\n", "model"),
    ("[synth]\nnum_ids_train = 'many'\n", "num_ids_train"),
    ("[trian]\nepochs = 1\n", "trian"),
])
def test_recipe_rejects_unknown_keys_and_wrong_types_naming_them(tmp_path, edit, named):
    base = TINY
    table = edit.split("]")[0] + "]"
    if table in base:  # replace that table of the tiny recipe
        start = base.index(table)
        end = base.find("\n[", start + 1)
        base = base[:start] + base[end + 1:] if end != -1 else base[:start]
    pattern = r"\.'?".join(named.split("."))  # typedconfig writes unknown keys as train.'foo'
    with pytest.raises(RecipeError, match=pattern) as info:
        load_recipe(_write(tmp_path, base + "\n" + edit))
    assert str(tmp_path / "recipe.toml") in str(info.value)


def test_recipe_needs_a_dataset_root_without_synth(tmp_path):
    with pytest.raises(RecipeError, match="dataset.root"):
        load_recipe(_write(tmp_path, "[dataset]\nname = 'market'\n"))
    with pytest.raises(RecipeError, match="TABLE.KEY=VALUE"):
        load_recipe(_write(tmp_path, TINY), ["epochs=3"])
    recipe = load_recipe(_write(tmp_path, TINY), ["train.epochs=3", "eval.distance=cosine"])
    assert recipe.train["epochs"] == 3 and recipe.eval["distance"] == "cosine"


PAPER_RECIPES = ("market", "duke", "cuhk03-labeled", "cuhk03-detected")


def test_shipped_recipes_carry_the_papers_settings():
    names = {p.stem for p in PIPELINES.glob("*.toml")}
    papers = {*PAPER_RECIPES, *(f"ablation-{n}" for n in PAPER_RECIPES)}
    assert papers | {f"{n}+extras" for n in papers} | {"demo"} <= names
    recipes = {name: load_recipe(PIPELINES / f"{name}.toml") for name in names}
    for name in ("market", "duke"):
        assert recipes[name].train["lambda_intra"] == 0.1 and recipes[name].crop["beta"] == pytest.approx(3 / 48)
    for name in ("cuhk03-labeled", "cuhk03-detected"):
        r = recipes[name]
        assert r.train["lambda_intra"] == 0.2 and r.crop["beta"] == pytest.approx(3 / 48)
        assert r.dataset.name == name and r.dataset.options["protocol"] == "classic"
        assert r.eval["protocol"] == "cuhk03-classic"
    for name in PAPER_RECIPES:
        # Table 6 with the paper's definitions and the models of Tables 7-9, per dataset; today's as +extras
        ablation, extras = recipes[f"ablation-{name}"], recipes[f"ablation-{name}+extras"]
        assert ablation.models == ["baseline-paper", "aligned-paper", "intra-paper", "inter", "intra-inter",
                                   "aligned-fc", "intra-inter-joint"]
        assert extras.models == ["baseline", "aligned", "intra", "inter", "intra-inter"]
        assert ablation.eval["branches"] is True and ablation.dataset.name == extras.dataset.name == name
        for r in (ablation, extras):
            assert r.train["lambda_intra"] == 0.5 and r.crop["beta"] == pytest.approx(5 / 48)
    for name in papers:
        # paper-exact: no augmentation, plain SGD (Keras' defaults: no momentum, no weight decay); +extras opt in
        t, x = recipes[name].train, recipes[f"{name}+extras"].train
        assert t["augment"] == {"flip": False, "pad": 0, "erasing": 0.0, "color_jitter": 0.0}
        assert (t["optimizer"], t["momentum"], t["weight_decay"]) == ("sgd", 0.0, 0.0)
        assert x["augment"] == {"flip": True, "pad": 10, "erasing": 0.5}
        assert (x["momentum"], x["weight_decay"]) == (0.9, 5e-4)
        for r in (recipes[name], recipes[f"{name}+extras"]):
            t = r.train
            assert (t["epochs"], t["lr"], t["lr_step"], t["batch_size"]) == (100, 0.01, 40, 32)
            assert r.crop["body_size"] == [384, 192] and r.crop["part_size"] == [96, 192]
        for table in ("dataset", "crop"):       # the same experiment otherwise
            assert recipes[name].raw[table] == recipes[f"{name}+extras"].raw[table], (name, table)
    demo = recipes["demo"]
    assert demo.synth is not None and demo.models == ["baseline", "intra-inter"]
    cuhk01 = recipes["cuhk01"]   # the real-data CPU check: its reader options, split and protocol
    assert cuhk01.dataset.name == "cuhk01" and cuhk01.dataset.options == {"num_test_ids": 486, "split": 0}
    assert cuhk01.eval["protocol"] == "cuhk01-single-shot" and cuhk01.crop["pose_source"] == "blazepose"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("recipe")
    recipe = load_recipe(_write(tmp, TINY))
    out = tmp / "out"
    first = run_recipe(recipe, out, progress=False)
    return recipe, out, first


@pytest.mark.slow
def test_run_chains_the_stages_and_writes_the_reports(tiny_run):
    recipe, out, first = tiny_run
    assert first.stages == {"synth": "ran", "crop": "ran", "train/baseline": "ran", "train/intra-inter": "ran",
                            "eval/baseline": "ran", "eval/intra-inter": "ran"}  # the two trainings ran in parallel
    assert sorted(p.name for p in (out / "cache").iterdir() if p.is_dir()) == ["gallery", "query", "train"]
    run = out / "runs" / "intra-inter"
    assert (run / "model.pt").is_file() and (run / "checkpoints" / "last.pt").is_file()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["protocol"] == "market" and 0.0 <= metrics["R1"] <= 100.0 and metrics["mAP"] is not None
    assert 0.0 < metrics["mINP"] <= 100.0
    assert len(metrics["cmc"]) == 20 and metrics["cmc"] == sorted(metrics["cmc"])
    for name in ("cmc.png", "ranked_list.png", "attention-0.png", "summary.md", "summary.html", "ranked.json"):
        assert (run / "eval" / name).stat().st_size > 0, name
    base = out / "runs" / "baseline" / "eval"
    assert (base / "ranked_list.png").is_file() and not list(base.glob("attention-*.png"))  # no intra-attention
    assert json.loads((base / "metrics.json").read_text())["model"] == "baseline"
    for name in ("results.md", "results.json", "cmc.png", "ranked_list.png", "summary.html"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "results.md").read_text()
    assert "| baseline |" in table and "| intra-inter |" in table
    with open(run / "eval" / "cmc.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # nothing changed: every stage is up to date
    again = run_recipe(recipe, out, progress=False)
    assert set(again.stages.values()) == {"skipped"}
    assert again.results["intra-inter"]["R1"] == metrics["R1"]
    # an evaluation setting changed: only the evaluation reruns
    cosine = load_recipe(recipe.path, ["eval.distance=cosine"])
    third = run_recipe(cosine, out, progress=False)
    assert third.stages["eval/intra-inter"] == third.stages["eval/baseline"] == "ran"
    assert {k: v for k, v in third.stages.items() if not k.startswith("eval/")} == {
        "synth": "skipped", "crop": "skipped", "train/baseline": "skipped", "train/intra-inter": "skipped"}
    assert json.loads((run / "eval" / "metrics.json").read_text())["distance"] == "cosine"


@pytest.mark.slow
def test_extract_and_export_the_trained_model(tiny_run, tmp_path):
    from reidtrain.export import export_onnx, extract_to_parquet, read_features

    _, out, _ = tiny_run
    run = out / "runs" / "intra-inter"
    path = extract_to_parquet(run, out / "cache", tmp_path / "features.parquet", workers=0, progress=False)
    table, feats, meta = read_features(path)
    n_query = pq.read_metadata(next((out / "cache" / "query").glob("*.parquet"))).num_rows
    assert table.column_names == ["image_id", "pid", "camid", "split"]
    assert feats.shape == (table.num_rows, 768) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert table.column("split").to_pylist().count("query") == n_query
    assert meta["model"] == "intra-inter" and meta["feature_dim"] == 768

    import onnx
    info = export_onnx(run / "model.pt", tmp_path / "model.onnx")
    graph = onnx.load(str(tmp_path / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["body", "head", "upper_body", "upper_leg", "lower_leg"]
    assert [o.name for o in graph.graph.output] == ["features"]
    assert info["max_rel_deviation"] < 1e-3


def test_model_choices_match_the_model_package():
    from reidtrain.config import MODEL_CHOICES
    from reidtrain.model import MODEL_NAMES
    assert MODEL_CHOICES == MODEL_NAMES


def test_staged_training_chains_the_runs_and_folds_the_keys(tmp_path):
    """[stages] (HydraPlus-Net): one run per stage, each initialised from the previous one's model.pt, only the
    last evaluated; the shipped hpnet-staged recipe plans exactly that."""
    from pipelines.runner import plan_configs

    recipe = load_recipe(PIPELINES / "hpnet-staged.toml")
    assert recipe.stages == {"hpnet": ["main", "af1", "af2", "af3", "fusion"]}
    _, _, trains, evals = plan_configs(recipe, tmp_path)
    names = [f"hpnet@stage={s}" for s in recipe.stages["hpnet"]]
    assert list(trains) == names and list(evals) == [names[-1]]
    assert trains[names[0]].init_from is None
    for before, after in zip(names, names[1:]):
        assert trains[after].init_from == tmp_path / "runs" / before / "model.pt"
        assert trains[after].model_options["stage"] == after.split("=")[1]
    bad = tmp_path / "bad.toml"
    bad.write_text('[dataset]\nroot = "x"\n[model]\nnames = ["intra-inter"]\n[stages]\nintra-inter = ["a", "b"]\n')
    with pytest.raises(RecipeError, match="no 'stage' option"):
        load_recipe(bad)
    bad.write_text('[dataset]\nroot = "x"\n[model]\nnames = ["hpnet"]\n[stages]\nhpnet = ["main", "nope"]\n')
    with pytest.raises(RecipeError, match="stages.hpnet"):
        load_recipe(bad)
