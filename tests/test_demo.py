"""`t2t demo`, shortened: every stage runs and the run dir holds what the README promises."""

import json

from transformers import AutoModelForSeq2SeqLM


def test_demo_end_to_end_writes_its_run_dir(tmp_path, run_cli):
    out = tmp_path / "demo"
    code, stdout, _ = run_cli("demo", "--out", out, "--steps", "12", "--max-examples", "3")
    assert code == 0
    for stage in ("1/4", "2/4", "3/4", "4/4"):
        assert stage in stdout
    assert f"report         {out / 'report.md'}" in stdout
    report = (out / "report.md").read_text()
    assert (
        report.startswith("# t2t demo")
        and "## Held-out tasks (zero-shot)" in report
        and "## Seen tasks" in report
    )
    assert "![loss curves](loss_curves.png)" in report
    results = json.loads((out / "eval" / "results.json").read_text())
    held_out = {n for n, t in results["tasks"].items() if t["held_out"]}
    assert held_out == {"color_check", "sum_check", "alphabet_first"}
    assert len(results["tasks"]) == 14
    for name in ("loss_curves.png", "eval/scores.png", "metrics.jsonl", "tokenizer/spiece.model"):
        assert (out / name).is_file(), name
    AutoModelForSeq2SeqLM.from_pretrained(str(out / "model"))
    # every log line says what share of its wall time went to building batches (encoding the first draws included)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged and all(0 < line["data_share"] < 1 for line in logged)
    # A second demo into the same folder is refused rather than mixed with the first.
    code, _, err = run_cli("demo", "--out", out, "--steps", "2")
    assert code == 2 and "exists and is not empty" in err
