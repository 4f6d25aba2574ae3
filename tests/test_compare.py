"""`t2t compare`, shortened: one mixture run, one single-task run per task, deltas and flags."""

import yaml

from t2t.compare import compare
from t2t.registry import Registry


def test_compare_trains_single_task_baselines_and_reports_deltas(tmp_path):
    mixtures = tmp_path / "mixtures"
    mixtures.mkdir()
    spec = {"name": "pair", "members": {"add_numbers": 3.0, "color_lookup": 1.0}, "held_out": ["sum_check"]}
    (mixtures / "pair.yaml").write_text(yaml.safe_dump(spec))
    registry = Registry.default(mixtures_dirs=[mixtures])
    result = compare("pair", tmp_path / "out", steps=8, max_examples=4, margin=2.0, registry=registry)
    rows = {r["task"]: r for r in result["tasks"]}
    assert set(rows) == {"add_numbers", "color_lookup"}
    for row in rows.values():
        assert row["delta"] == row["mixture"] - row["single"]
        assert row["negative_transfer"] == (row["delta"] < -2.0)
    # budgets follow the mixture's probabilities (3:1)
    assert rows["add_numbers"]["examples"] > 2 * rows["color_lookup"]["examples"]
    steps = {
        t: len((tmp_path / "out" / "single" / t / "metrics.jsonl").read_text().splitlines()) for t in rows
    }
    assert all(n >= 1 for n in steps.values())
    markdown = (tmp_path / "out" / "compare.md").read_text()
    assert "| task | examples | mixture | single | delta | |" in markdown and "Mean delta:" in markdown
    assert (tmp_path / "out" / "compare.png").stat().st_size > 5000
