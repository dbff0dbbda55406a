"""The accuracy benchmark's bookkeeping: seed statistics, the issue's target verdict, the controls table, CLI."""
import math

from benchmarks.bench_accuracy import CONTROLS, aggregate, control_configs, format_controls, parse_args, verdict


def _rows(model, maps, r1=None):
    return [{"model": model, "seed": s, "R1": (r1 or maps)[s], "R5": 2 * m, "mAP": m, "ss_R1": m / 2, "control": None}
            for s, m in enumerate(maps)]


def test_aggregate_gives_mean_sample_std_and_range():
    stats = aggregate(_rows("baseline", [5.0, 6.0, 7.0]), ("baseline", "aligned"))
    mean, std, lo, hi = stats["baseline"]["mAP"]
    assert (mean, lo, hi) == (6.0, 5.0, 7.0) and math.isclose(std, 1.0)        # ddof=1
    assert stats["baseline"]["seeds"] == 3 and "aligned" not in stats         # a model without runs is left out


def test_verdict_needs_the_gain_and_separate_ranges():
    base = _rows("baseline", [5.0, 5.5, 6.0])
    met = verdict(aggregate(base + _rows("intra-inter", [9.0, 9.5, 10.0]), ("baseline", "intra-inter")))
    assert met["met"] and met["ranges_separate"] and math.isclose(met["mAP_gain"], 4.0)
    # +3.3 on average, but one seed of intra-inter falls inside the baseline's range: not met
    overlap = verdict(aggregate(base + _rows("intra-inter", [5.9, 10.0, 10.6]), ("baseline", "intra-inter")))
    assert not overlap["met"] and not overlap["ranges_separate"] and overlap["mAP_gain"] >= 3
    small = verdict(aggregate(base + _rows("intra-inter", [6.5, 7.0, 7.5]), ("baseline", "intra-inter")))
    assert small["ranges_separate"] and not small["met"]
    assert verdict(aggregate(base, ("baseline",)))["met"] is None


def test_controls_change_one_thing_and_are_reported_against_the_same_seed():
    cfg = parse_args(["--epochs", "6", "--controls", "0", "1"])
    assert cfg.controls == (0, 1) and cfg.lr_step == round(6 * 3 / 4)
    configs = control_configs(cfg)
    assert [name for name, _, _ in configs] == list(CONTROLS)
    for name, model, ccfg in configs:
        changed = {k for k in vars(cfg) if getattr(cfg, k) != getattr(ccfg, k)}
        assert len(changed) == 1, (name, changed)
        assert ccfg.run_dir(model, 0) != cfg.run_dir(model, 0)                # never overwrites the reference run
    rows = _rows("intra-inter", [4.8, 5.3])
    control = {**_rows("intra-inter", [3.6])[0], "control": "literal attention (attention_norm off)"}
    table = format_controls([control], rows)
    assert "| literal attention (attention_norm off) | intra-inter | 0 | 3.6 | 3.6 | 4.8 | 4.8 | -1.2 |" in table
    assert format_controls([], rows) == ""
