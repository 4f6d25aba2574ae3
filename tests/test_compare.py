"""`t2t compare`, shortened: one mixture run, one single-task run per task, deltas and flags."""

import numpy as np
import pytest
import yaml

from t2t.compare import compare
from t2t.evaluation import Scored, delta_interval
from t2t.registry import Registry


def test_compare_trains_single_task_baselines_and_reports_deltas(tmp_path):
    mixtures = tmp_path / "mixtures"
    mixtures.mkdir()
    spec = {"name": "pair", "members": {"add_numbers": 3.0, "color_lookup": 1.0}, "held_out": ["sum_check"]}
    (mixtures / "pair.yaml").write_text(yaml.safe_dump(spec))
    registry = Registry.default(mixtures_dirs=[mixtures])
    result = compare(
        "pair", tmp_path / "out", steps=8, max_examples=4, margin=2.0, registry=registry, seeds=2
    )
    rows = {r["task"]: r for r in result["tasks"]}
    assert set(rows) == {"add_numbers", "color_lookup"} and result["seeds"] == 2
    for row in rows.values():
        assert row["delta"] == pytest.approx(row["mixture"] - row["single"])  # means over the two seeds
        assert row["ci_low"] <= row["delta"] + 1e-9 and row["delta"] <= row["ci_high"] + 1e-9
        assert row["negative_transfer"] == (row["ci_high"] < -2.0)
        assert row["positive_transfer"] == (row["ci_low"] > 2.0)
    mean = np.mean([r["delta"] for r in rows.values()])
    assert result["mean_delta"] == pytest.approx(mean)
    assert result["mean_ci_low"] <= mean + 1e-9 <= result["mean_ci_high"] + 2e-9
    # the mean's interval is narrower than the widest task's (it averages independent resamples)
    assert result["mean_ci_high"] - result["mean_ci_low"] <= max(
        r["ci_high"] - r["ci_low"] for r in rows.values()
    )
    for seed in (0, 1):  # each seed trained its own mixture and single-task models
        assert (tmp_path / "out" / f"seed_{seed}" / "mixture" / "model" / "config.json").is_file()
    # budgets follow the mixture's probabilities (3:1)
    assert rows["add_numbers"]["examples"] > 2 * rows["color_lookup"]["examples"]
    steps = {
        t: len((tmp_path / "out" / "seed_0" / "single" / t / "metrics.jsonl").read_text().splitlines())
        for t in rows
    }
    assert all(n >= 1 for n in steps.values())
    markdown = (tmp_path / "out" / "compare.md").read_text()
    assert (
        "| task | examples | mixture | single | delta | 95% interval | |" in markdown
        and "Mean delta:" in markdown
    )
    assert (tmp_path / "out" / "compare.png").stat().st_size > 5000


def constant(value):
    return Scored(value, {"only": lambda rows: value})


def per_row(correct):
    values = np.array(correct, dtype=float) * 100
    return Scored(float(values.mean()), {"only": lambda rows: float(values[rows].mean())})


def test_delta_interval_by_hand():
    rng = np.random.default_rng(0)
    assert delta_interval([constant(60.0)], [constant(50.0)], 4, rng) == (10.0, 10.0, 10.0)
    # two seeds that disagree (+10, -10): the point is 0 and resampling seeds spans both
    point, low, high = delta_interval([constant(60.0), constant(40.0)], [constant(50.0)] * 2, 4, rng)
    assert (point, low, high) == (0.0, -10.0, 10.0)
    # rows: the mixture right on 3 of 4, the single model on 1 of 4 (a row the mixture also gets): +50 points;
    # every resample keeps mixture >= single: the interval lies within [0, 100]
    point, low, high = delta_interval([per_row([1, 1, 1, 0])], [per_row([1, 0, 0, 0])], 4, rng)
    assert point == 50.0 and 0.0 <= low < 50.0 < high <= 100.0
    # the median over templates, then the delta: two templates, the mixture's median 70, the single's 40
    mixed = Scored(70.0, {"a": lambda rows: 60.0, "b": lambda rows: 80.0})
    single = Scored(40.0, {"a": lambda rows: 30.0, "b": lambda rows: 50.0})
    assert delta_interval([mixed], [single], 3, rng) == (30.0, 30.0, 30.0)
