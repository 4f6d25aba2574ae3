"""`t2t demo`, shortened: every stage runs and the run dir holds what the README promises."""

import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer


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
    records = [json.loads(line) for line in (out / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 14 * 3 * 3  # 14 tasks, 3 templates each, 3 rows
    assert_plain_transformers_agrees(out / "model", records)
    # every log line says what share of its wall time went to building batches (encoding the first draws included)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged and all(0 < line["data_share"] < 1 for line in logged)
    # A second demo into the same folder is refused rather than mixed with the first.
    code, _, err = run_cli("demo", "--out", out, "--steps", "2")
    assert code == 2 and "exists and is not empty" in err


def assert_plain_transformers_agrees(model_dir, records):
    """What a user's own script gets from the exported model dir with transformers alone (AutoTokenizer, greedy
    `generate`, the summed log-likelihood of each choice): t2t's predictions, choice scores and ranked answers."""
    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    limits = json.loads((model_dir / "t2t_encoding.json").read_text())
    generated = [r for r in records if r["choices"] is None]
    ranked = [r for r in records if r["choices"] is not None]
    assert len(generated) == 8 * 9 and len(ranked) == 6 * 9
    with torch.no_grad():
        for record in generated:
            ids = tokenizer(record["input"], return_tensors="pt", truncation=True,
                            max_length=limits["max_input_tokens"]).input_ids  # fmt: skip
            out = model.generate(
                ids, max_new_tokens=limits["max_target_tokens"], do_sample=False, num_beams=1
            )
            assert tokenizer.decode(out[0], skip_special_tokens=True).strip() == record["prediction"], record
        for record in ranked:  # t2t's default scoring: the input and each choice with EOS, as it trains
            ids = tokenizer(record["input"], return_tensors="pt").input_ids
            sums = []
            for choice in record["choices"]:
                labels = tokenizer(choice, return_tensors="pt").input_ids
                sums.append(-model(input_ids=ids, labels=labels).loss.item() * labels.shape[1])
            assert sums == pytest.approx(record["choice_scores"]["sum"], abs=1e-4), record
            assert record["ranked"] == record["choices"][max(range(len(sums)), key=sums.__getitem__)]
