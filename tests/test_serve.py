"""`t2t serve` as a user runs it: a real uvicorn server in a subprocess on a tiny checkpoint trained here, talked
to with a real HTTP client; and `t2t predict`, whose answers must equal the server's and `t2t eval`'s."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from t2t.registry import Registry
from t2t.server import wait_until_serving
from t2t.sources import load_split, select_rows
from tests.conftest import train_checkpoint

REPO = Path(__file__).resolve().parents[1]
TASKS = ["sentiment", "add_numbers", "larger_number"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    members = {task: {"weight": 1.0} for task in TASKS}
    return train_checkpoint(root, tiny_tokenizer, "three", members, 40, 48, 8), root / "mixtures"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, *extra: str, before: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`t2t [BEFORE...] serve --model MODEL EXTRA...` on a free port, once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "t2t", *before, "serve", "--model", str(model), "--port", str(port),
               "--device", "cpu", *extra]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, process, 120)
    return process, url


@pytest.fixture(scope="module")
def server(checkpoint):
    model, mixtures = checkpoint
    process, url = start_server(model, "--mixture", "three", "--max-rows", "40", "--max-choices", "70", "--max-field-chars", "300",
                                "--max-body-bytes", "60000", "--max-body-seconds", "3", "--wait-ms", "20", "--batch-rows", "16", "--batch-tokens", "4096", before=("--mixtures-dir", str(mixtures)))  # fmt: skip
    yield url
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def eval_rows(task: str, n: int) -> list[dict]:
    """The rows `t2t eval --max-examples n` takes from the validation split, as plain dicts."""
    data = load_split(Registry.default().task(task), "validation")
    return [dict(data.rows[int(i)]) for i in select_rows(task, "validation", len(data), n)]


def post(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", json=body, timeout=120, **kwargs)


def test_tasks_and_liveness(server):
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok", "model_loaded": True, "device": "cpu",
                                                      "dtype": "fp32", "tasks": 3}  # fmt: skip
    tasks = {t["task"]: t for t in httpx.get(f"{server}/v1/tasks").json()["tasks"]}
    assert sorted(tasks) == sorted(TASKS)
    sentiment = tasks["sentiment"]
    assert sentiment["fields"] == {
        "text": 'a sentence like "the plum was sweet and fun"',
        "label": "0 negative, 1 positive",
    }
    assert sentiment["default_template"] == "review" and sentiment["metrics"] == ["accuracy"]
    assert sentiment["templates"][0] == {"name": "review", "input_fields": ["text"], "servable": True,
                                         "answer_choices": ["negative", "positive"], "ranked": True}  # fmt: skip
    assert tasks["add_numbers"]["templates"][0]["input_fields"] == ["a", "b"]
    assert tasks["add_numbers"]["templates"][0]["ranked"] is False
    assert httpx.get(f"{server}/openapi.json").json()["paths"].keys() >= {
        "/v1/predict",
        "/v1/tasks",
        "/v1/health",
    }


def test_predict_routes_renders_and_scores(server):
    response = post(server, {"task": "sentiment", "rows": [{"text": "the plum was sweet and fun"}],
                             "return_scores": True, "return_input": True})  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["task"], body["template"], body["answered"], body["refused"]) == (
        "sentiment",
        "review",
        1,
        0,
    )
    result = body["results"][0]
    assert result["input"] == "Review: the plum was sweet and fun\nIs this review positive or negative?"
    assert set(result["scores"]) == {"negative", "positive"}
    assert result["answer"] == max(result["scores"], key=result["scores"].get)
    assert all(s < 0 for s in result["scores"].values())  # log-likelihoods
    # choices that come from the row (larger_number: the two numbers themselves)
    body = post(server, {"task": "larger_number", "template": "greater", "rows": [{"a": 12, "b": 7}],
                         "return_scores": True}).json()  # fmt: skip
    assert set(body["results"][0]["scores"]) == {"12", "7"} and body["template"] == "greater"
    # a generation task: no scores
    body = post(server, {"task": "add_numbers", "rows": [{"a": 3, "b": 4}], "return_scores": True}).json()
    assert set(body["results"][0]) == {"answer"}
    # an input longer than the model's max_input_tokens (48 here) is cut, as in training, and the answer says so
    cut_before = _metric(server, 't2t_inputs_cut_total{task="sentiment"}')
    long_text = " ".join(["the plum was sweet and fun"] * 10)
    body = post(server, {"task": "sentiment", "rows": [{"text": long_text}, {"text": "so good"}]}).json()
    assert body["results"][0]["input_cut"] is True and "input_cut" not in body["results"][1]
    assert _metric(server, 't2t_inputs_cut_total{task="sentiment"}') == cut_before + 1


def test_field_values_are_data_never_templates(server):
    payloads = ["{{ 7*7 }}", "{% raw %}x{% endraw %}", "{{ ''.__class__ }}"]
    body = post(
        server, {"task": "sentiment", "rows": [{"text": p} for p in payloads], "return_input": True}
    ).json()
    assert [r["input"] for r in body["results"]] == [
        f"Review: {p}\nIs this review positive or negative?" for p in payloads
    ]


def test_a_bad_row_is_refused_alone(server):
    rows = [
        {"text": "fine"},
        {"txt": "typo"},
        {},
        {"text": "x" * 301},
        {"text": {"deep": [[[[["x"]]]]]}},
        ["a"],
    ]
    body = post(server, {"task": "sentiment", "rows": rows}).json()
    assert (body["answered"], body["refused"]) == (1, 5)
    errors = [r.get("error") for r in body["results"]]
    assert errors[0] is None and body["results"][0]["answer"] in ("negative", "positive")
    assert "row 1" in errors[1] and "unknown field 'txt' (did you mean 'text'?)" in errors[1]
    assert "row 2" in errors[2] and "row has no field 'text'" in errors[2]
    assert "row 3" in errors[3] and "field 'text' holds 301 characters, over the limit of 300" in errors[3]
    assert "row 4" in errors[4] and "nested deeper than 4 levels" in errors[4]
    assert "row 5" in errors[5] and "a row must be an object" in errors[5]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"task": "sentimnt", "rows": [{"text": "a"}]}, 404, "unknown task 'sentimnt' (did you mean 'sentiment'?)"),
    ({"task": "sentiment", "template": "nope", "rows": [{"text": "a"}]}, 404, "has no template 'nope'"),
    ({"task": "sentiment", "rows": [{"label": 1}]}, 422, "no row can be answered; task 'sentiment', template "
                                                          "'review', row 0: row has no field 'text'"),
    ({"task": "sentiment", "rows": [{"text": "a", "extra": 1}]}, 422, "row 0: unknown field 'extra'"),
    ({"task": "sentiment", "rows": [{"text": "a"}] * 41}, 413, "41 rows is over the limit of 40 rows per request"),
    # answer choices add up over a request's rows (a field may hold the list): unbounded work per request before
    ({"task": "sentiment", "rows": [{"text": "a"}] * 36}, 413, "the rows hold 72 answer choices in all, over the "
                                                               "limit of 70 per request (max_choices)"),
    ({"task": "sentiment", "rows": []}, 422, "give at least one row"),
    ({"task": "sentiment"}, 422, "rows: Field required"),
    ({"task": "sentiment", "rows": [{"text": "a"}], "stream": True}, 422, "stream: Extra inputs are not permitted"),
])  # fmt: skip
def test_errors_are_one_json_line_with_the_right_status(server, body, status, message):
    response = post(server, body)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"] and message in response.json()["error"]


def test_unknown_paths_and_methods_answer_in_the_error_shape(server):
    response = httpx.get(f"{server}/v1/predictt", timeout=30)
    assert response.status_code == 404 and response.json() == {
        "error": "no such endpoint: /v1/predictt (see /docs)"
    }
    response = httpx.get(f"{server}/v1/predict", timeout=30)
    assert response.status_code == 405 and response.json() == {"error": "GET is not allowed on /v1/predict"}
    assert response.headers["allow"] == "POST"


def test_a_body_that_stalls_is_408_and_a_slow_one_is_answered(server):
    # a client that sent its headers and then stalled held its connection for good (no answer after 120 s)
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as stalled:
        stalled.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n{\"task\": ")  # fmt: skip
        stalled.settimeout(60)
        started = time.perf_counter()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = stalled.recv(4096)
            if not chunk:
                break
            answer += chunk
        took = time.perf_counter() - started
    assert answer.startswith(b"HTTP/1.1 408 ") and 2.5 < took < 30, (answer, took)
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "error": "the request body did not arrive whole within 3 s (max_body_seconds)"
    }

    # a body that arrives in pieces within the time is answered
    def pieces():
        yield b'{"task": "sentiment", '
        time.sleep(1)
        yield b'"rows": [{"text": "so good"}]}'

    response = httpx.post(f"{server}/v1/predict", content=pieces(), headers={"content-type": "application/json"},
                          timeout=60)  # fmt: skip
    assert response.status_code == 200 and response.json()["answered"] == 1


def test_a_head_without_end_is_431_and_a_head_that_stalls_is_408(server):
    # uvicorn's httptools protocol reads a request's line and headers without a bound: a header of 300 MB sent to
    # the demo's server grew it by 0.6 GB (1.1 GB at peak), and headers sent without an end held the connection
    host, port = server.removeprefix("http://").split(":")

    def answer(head: bytes) -> tuple[bytes, float]:
        with socket.create_connection((host, int(port))) as sock:
            started = time.perf_counter()
            sock.sendall(head)
            sock.settimeout(60)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data, time.perf_counter() - started

    data, _ = answer(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 431 ")
    assert json.loads(data.split(b"\r\n\r\n", 1)[1]) == {
        "error": "the request's line and headers are over the limit of 65,536 bytes"
    }
    data, _ = answer(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: " + b"a" * 60_000
                     + b"\r\n\r\n")  # fmt: skip
    assert data.startswith(b"HTTP/1.1 200 ")
    data, took = answer(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: appl")
    assert data.startswith(b"HTTP/1.1 408 ") and 2.5 < took < 30, (data, took)
    assert json.loads(data.split(b"\r\n\r\n", 1)[1]) == {
        "error": "the request's line and headers did not arrive whole within 3 s (max_body_seconds)"
    }
    # a connection that never sends a byte is closed the same way (it held its file descriptor for good)
    data, took = answer(b"")
    assert data.startswith(b"HTTP/1.1 408 ") and 2.5 < took < 30, (data, took)
    assert post(server, {"task": "sentiment", "rows": [{"text": "so good"}]}).json()["answered"] == 1


def test_a_thousand_idle_connections_leave_the_server_able_to_answer(checkpoint):
    # at the common soft limit of 1,024 open files, 1,500 connections that sent nothing left the server no file
    # descriptor to accept another client with: /healthz was reset; t2t serve raises its soft limit within the hard
    import resource

    model, mixtures = checkpoint
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"this machine's hard limit on open files is {hard}: no room to show it")
    port = free_port()
    command = [sys.executable, "-m", "t2t", "--mixtures-dir", str(mixtures), "serve", "--model", str(model),
               "--mixture", "three", "--port", str(port), "--device", "cpu"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)))  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    idle: list[socket.socket] = []
    try:
        wait_until_serving(url, process, 120)
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert int(line.split()[3]) == (65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)), line
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))  # this process's own sockets
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(1500)]
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_malformed_json_and_oversized_bodies(server):
    response = httpx.post(f"{server}/v1/predict", content=b'{"task": "sentiment", "rows": [', timeout=30,
                          headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 400 and response.json() == {"error": "the request body is not valid JSON"}
    json_body = {"content-type": "application/json"}
    deep = b'{"task": "sentiment", "rows": [{"text": ' + b"[" * 10_000 + b"]" * 10_000 + b"}]}"
    response = httpx.post(f"{server}/v1/predict", content=deep, headers=json_body, timeout=30)
    assert response.status_code == 400 and response.json() == {
        "error": "the request body is JSON nested too deeply to read"
    }
    # JSON's "\\ud800" decodes to a lone surrogate, which no tokenizer takes (it was a 500): the row is refused
    lone = b'{"task": "sentiment", "rows": [{"text": "so \\ud800"}, {"text": "fine \\ud83d\\ude00"}]}'
    response = httpx.post(f"{server}/v1/predict", content=lone, headers=json_body, timeout=30)
    assert response.status_code == 200 and (response.json()["answered"], response.json()["refused"]) == (1, 1)
    assert response.json()["results"][0]["error"].endswith(
        "row 0: field 'text': character 3 is a lone surrogate (\\ud800), not Unicode text"
    )
    # a body not declared as JSON (curl -d without -H, a form) is not read as JSON: 415, saying what to send
    good = json.dumps({"task": "sentiment", "rows": [{"text": "a"}]}).encode()
    form = httpx.post(f"{server}/v1/predict", data={"task": "sentiment"}, timeout=30)  # what curl -d sends
    text = httpx.post(
        f"{server}/v1/predict", content=good, headers={"content-type": "text/plain"}, timeout=30
    )
    for response, said in ((form, "application/x-www-form-urlencoded"), (text, "text/plain")):
        assert response.status_code == 415 and response.json() == {"error": "send the body as JSON with the header "
            f"content-type: application/json (it came as '{said}')"}  # fmt: skip
    response = httpx.post(f"{server}/v1/predict", content=good, timeout=30)  # no content type at all
    assert response.status_code == 415 and "(it came without a content-type)" in response.json()["error"]
    response = httpx.post(f"{server}/v1/predict", content=good, headers={"content-type": "application/json; "
                          "charset=utf-8"}, timeout=30)  # fmt: skip
    assert response.status_code == 200 and response.json()["answered"] == 1
    big = json.dumps({"task": "sentiment", "rows": [{"text": "word " * 50}] * 300}).encode()
    response = httpx.post(f"{server}/v1/predict", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over the limit of 60,000 bytes" in response.json()["error"]

    def chunks():  # no Content-Length: the limit holds while the body streams
        for _ in range(100):
            yield b" " * 1000

    response = httpx.post(
        f"{server}/v1/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_per_task_health_runs_the_golden_rows(server):
    response = httpx.get(f"{server}/v1/health", timeout=120)
    assert response.status_code == 200
    body = response.json()
    assert body["healthy"] is True and body["unhealthy"] == []
    sentiment = body["tasks"]["sentiment"]
    assert sentiment["healthy"] is True and sentiment["problems"] == []
    assert sentiment["golden_rows"] == sentiment["rendered"] == 2 and 0 <= sentiment["answers_agree"] <= 2
    assert sentiment["latency_ms"] > 0
    # callers at once share one check (each ran every task's golden rows on the model's thread, queued before the
    # model's requests), and a report is served for 5 s
    checks = _metric(server, "t2t_health_checks_total")
    with ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(lambda _: httpx.get(f"{server}/v1/health", timeout=120).json(), range(16)))
    assert all(b["tasks"] == bodies[0]["tasks"] for b in bodies)
    assert _metric(server, "t2t_health_checks_total") - checks <= 1
    assert all(0 <= b["checked_seconds_ago"] <= 5 for b in bodies)


def test_concurrent_requests_are_batched_and_answer_as_predict_and_eval(
    server, checkpoint, tmp_path, run_cli
):
    model, mixtures = checkpoint
    rows = {task: eval_rows(task, 16) for task in TASKS}
    templates = {"sentiment": "feeling", "add_numbers": "plus", "larger_number": "larger"}
    before = httpx.get(f"{server}/metrics").text

    def ask(i: int) -> tuple[str, int, str]:
        task = TASKS[i % 3]
        row = (i // 3) % 16
        body = post(server, {"task": task, "template": templates[task], "rows": [rows[task][row]]}).json()
        return task, row, body["results"][0]["answer"]

    with ThreadPoolExecutor(64) as pool:
        served = list(pool.map(ask, range(64)))
    assert len(served) == 64
    metrics = httpx.get(f"{server}/metrics").text
    assert 't2t_requests_total{status="200",task="sentiment"}' in metrics
    calls = _sample(metrics, "t2t_batch_rows_count") - _sample(before, "t2t_batch_rows_count")
    assert calls < 64  # coalesced: fewer model calls than requests
    within = _sample(metrics, 't2t_batch_rows_bucket{le="16.0"}') - _sample(
        before, 't2t_batch_rows_bucket{le="16.0"}'
    )
    assert within == calls  # --batch-rows 16: no model call took more than 16 rows
    for task in TASKS:
        write_rows = tmp_path / f"{task}.jsonl"
        write_rows.write_text("".join(json.dumps(r) + "\n" for r in rows[task]))
        out = tmp_path / f"{task}.preds.jsonl"
        code, _, err = run_cli("--mixtures-dir", mixtures, "predict", "--model", model, "--task", task, "--template",
                               templates[task], "--input", write_rows, "--out", out, "--device", "cpu", "--quiet")  # fmt: skip
        assert code == 0, err
        predicted = [json.loads(line)["answer"] for line in out.read_text().splitlines()]
        for served_task, row, answer in served:
            if served_task == task:
                assert answer == predicted[row], (task, row)
        code, _, err = run_cli("eval", "--model", model, "--tasks", task, "--template", templates[task],
                               "--max-examples", "16", "--device", "cpu", "--out", tmp_path / f"eval-{task}")  # fmt: skip
        assert code == 0, err
        records = [
            json.loads(line)
            for line in (tmp_path / f"eval-{task}" / "predictions.jsonl").read_text().splitlines()
        ]
        key = "ranked" if task != "add_numbers" else "prediction"
        assert [r[key] for r in records] == predicted, task


def _sample(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_unhealthy_when_a_template_no_longer_renders_its_golden_rows(checkpoint, tmp_path):
    model, _ = checkpoint
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    spec = yaml.safe_load((REPO / "templates" / "builtin" / "sentiment.yaml").read_text())
    spec["name"] = "sentiment_edited"
    spec["templates"][0]["input"] = "Review text: {{ text }}"  # the golden rows still expect the old input
    (tasks / "sentiment_edited.yaml").write_text(yaml.safe_dump(spec))
    process, url = start_server(
        model, "--tasks", "sentiment_edited", "add_numbers", before=("--templates-dir", str(tasks))
    )
    try:
        response = httpx.get(f"{url}/v1/health", timeout=120)
        assert response.status_code == 503
        body = response.json()
        assert body["unhealthy"] == ["sentiment_edited"] and body["tasks"]["add_numbers"]["healthy"] is True
        assert (
            "renders 'Review text: the fig was poor', the task file expects"
            in body["tasks"]["sentiment_edited"]["problems"][0]
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_shutdown_lets_requests_in_flight_finish(checkpoint):
    model, mixtures = checkpoint
    process, url = start_server(
        model, "--mixture", "three", "--no-batching", before=("--mixtures-dir", str(mixtures))
    )
    results: list = []

    def slow_request():  # many rows: a second or more of model time
        results.append(post(url, {"task": "add_numbers", "rows": [{"a": i, "b": i} for i in range(200)]}))

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.5)
    os.kill(process.pid, signal.SIGTERM)
    thread.join(timeout=120)
    assert process.wait(timeout=60) in (
        0,
        -signal.SIGTERM,
    )  # uvicorn re-raises the signal once it has drained
    assert results and results[0].status_code == 200 and results[0].json()["answered"] == 200
    output = process.stdout.read()
    assert "Traceback" not in output


def test_predict_refuses_a_bad_file_whole_or_answers_the_rest(checkpoint, tmp_path, run_cli):
    model, _ = checkpoint
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "so good"}\n{"txt": "typo"}\n{"text": "awful"}\n')
    out = tmp_path / "preds.jsonl"
    code, _, err = run_cli("predict", "--model", model, "--task", "sentiment", "--input", rows, "--out", out,
                           "--device", "cpu", "--quiet")  # fmt: skip
    assert code == 2 and not out.exists()
    assert err.count("\n") == 1 and "rows.jsonl" in err and "row 1" in err and "unknown field 'txt'" in err
    code, stdout, err = run_cli("predict", "--model", model, "--task", "sentiment", "--input", rows, "--out", out,
                                "--device", "cpu", "--quiet", "--skip-bad-rows", "--scores", "--with-input")  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["row"] for line in lines] == [0, 1, 2]
    assert "unknown field 'txt'" in lines[1]["error"] and lines[0]["input"].startswith("Review: so good")
    assert set(lines[2]["scores"]) == {"negative", "positive"}
    assert "2 rows answered with template review, 1 refused" in stdout
    code, _, err = run_cli("predict", "--model", model, "--task", "sentiment", "--input", rows, "--out", out,
                           "--device", "cpu", "--quiet", "--skip-bad-rows", "--max-field-chars", "6", "--batch-size", "1")  # fmt: skip
    assert code == 0, err
    limited = [json.loads(line) for line in out.read_text().splitlines()]
    assert "field 'text' holds 7 characters, over the limit of 6 (max_field_chars)" in limited[0]["error"]
    assert limited[2]["answer"] == lines[2]["answer"]  # "awful": 5 characters
    # jsonl on stdin, csv and parquet files give the same answers
    import pandas as pd

    pd.DataFrame([{"text": "so good"}, {"text": "awful"}]).to_csv(tmp_path / "rows.csv", index=False)
    pd.DataFrame([{"text": "so good"}, {"text": "awful"}]).to_parquet(tmp_path / "rows.parquet")
    answers = [lines[0]["answer"], lines[2]["answer"]]
    # as a Windows editor saves them: a byte order mark first, CRLF line ends (the jsonl was refused, "Unexpected
    # UTF-8 BOM")
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "so good"}\r\n{"text": "awful"}\r\n')
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbftext\r\nso good\r\nawful\r\n")
    for source in ("rows.csv", "rows.parquet", "bom.jsonl", "bom.csv"):
        code, _, err = run_cli("predict", "--model", model, "--task", "sentiment", "--input", tmp_path / source,
                               "--out", tmp_path / "p.jsonl", "--device", "cpu", "--quiet")  # fmt: skip
        assert code == 0, err
        assert [json.loads(x)["answer"] for x in (tmp_path / "p.jsonl").read_text().splitlines()] == answers
    result = subprocess.run([sys.executable, "-m", "t2t", "predict", "--model", str(model), "--task", "sentiment",
                             "--input", "-", "--out", str(tmp_path / "s.jsonl"), "--device", "cpu", "--quiet"],
                            input='{"text": "so good"}\n{"text": "awful"}\n', capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [json.loads(x)["answer"] for x in (tmp_path / "s.jsonl").read_text().splitlines()] == answers
    result = subprocess.run([sys.executable, "-m", "t2t", "predict", "--model", str(model), "--task", "sentiment",
                             "--input", "-", "--out", str(tmp_path / "bad.jsonl"), "--device", "cpu"],
                            input='{"text": "ok"}\nnot json\n', capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert result.returncode == 2 and "stdin line 2: not JSON" in result.stderr
    assert not (tmp_path / "bad.jsonl").exists()


def _metric(url: str, name: str) -> float:
    return _sample(httpx.get(f"{url}/metrics", timeout=30).text, name)


def _wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server did not get there in time"
        time.sleep(0.05)


def _answer(sock: socket.socket) -> tuple[int, dict]:
    """The status and JSON body of the response on a `Connection: close` request."""
    sock.settimeout(60)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def test_a_request_past_capacity_gets_503_at_once_and_one_left_in_the_queue_is_never_computed(checkpoint):
    # with no bound, every request of a flood was read, held and queued (each body up to --max-body-bytes), and a
    # queued request whose client had given up was still computed when its turn came
    model, mixtures = checkpoint
    process, url = start_server(model, "--mixture", "three", "--max-concurrent", "2",
                                before=("--mixtures-dir", str(mixtures)))  # fmt: skip
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"task": "sentiment", "rows": [{"text": "so good"}]}).encode()
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
    try:
        # two clients send their headers and part of a body: two requests in progress
        first, second = (socket.create_connection((host, int(port))) for _ in range(2))
        for sock in (first, second):
            sock.sendall(head + body[:10])
        _wait_for(lambda: _metric(url, "t2t_requests_in_progress") == 2)
        busy = post(url, {"task": "sentiment", "rows": [{"text": "fine"}]})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json() == {"error": "the server is at capacity: 2 requests in progress (max_concurrent 2); "
                                        "retry after a second"}  # fmt: skip
        assert httpx.get(f"{url}/healthz").status_code == 200  # liveness is not a predict request
        assert _metric(url, "t2t_requests_turned_away_total") == 1
        first.sendall(body[10:])
        assert _answer(first)[0] == 200
        second.close()  # gone before its body was whole: its place is free
        _wait_for(lambda: _metric(url, "t2t_requests_in_progress") == 0)
        assert post(url, {"task": "sentiment", "rows": [{"text": "fine"}]}).json()["answered"] == 1
        first.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)

    process, url = start_server(model, "--mixture", "three", "--max-rows", "4096",
                                before=("--mixtures-dir", str(mixtures)))  # fmt: skip
    host, port = url.removeprefix("http://").split(":")
    try:
        with ThreadPoolExecutor(1) as pool:
            # one model call of 4,096 generated rows (seconds of model time), then a request queued behind it whose
            # client goes away
            call = pool.submit(
                post, url, {"task": "add_numbers", "rows": [{"a": i % 50, "b": 3} for i in range(4096)]}
            )
            _wait_for(lambda: _metric(url, "t2t_batch_rows_count") == 1)  # in the model
            left = socket.create_connection((host, int(port)))
            left.sendall(head + body)
            _wait_for(lambda: _metric(url, "t2t_queue_depth") == 1)
            left.close()
            assert call.result().json()["answered"] == 4096
        _wait_for(lambda: _metric(url, "t2t_requests_abandoned_total") == 1)
        assert _metric(url, "t2t_batch_rows_count") == 1  # the model ran the first call, not the second
        assert _metric(url, "t2t_requests_in_progress") == 0
        assert post(url, {"task": "sentiment", "rows": [{"text": "fine"}]}).json()["answered"] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert "Traceback" not in process.stdout.read()


def test_requests_pipelined_without_end_are_read_as_fast_as_they_are_answered(checkpoint):
    # uvicorn resumed reading a connection at every read of a request's body, so a client pipelining requests
    # without end was read without end: 97 MB sent in 10 s to the demo's server, +124 MB of its memory, while it
    # answered 265; now at most 8 requests wait read on a connection, and the client's sending waits on the server
    model, mixtures = checkpoint
    process, url = start_server(model, "--mixture", "three", before=("--mixtures-dir", str(mixtures)))
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"task": "sentiment", "rows": [{"text": "so good " * 200}] * 20}).encode()
    request = (b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
               b"\r\n%s" % (len(body), body))  # fmt: skip
    offered = request * 3000  # 97 MB
    sent, answered = [0], [0]
    sock = socket.create_connection((host, int(port)))

    def read() -> None:
        with contextlib.suppress(OSError):
            while chunk := sock.recv(1 << 20):
                answered[0] += chunk.count(b"HTTP/1.1 200 ")

    def write() -> None:
        view = memoryview(offered)
        with contextlib.suppress(OSError):
            while sent[0] < len(offered):
                sent[0] += sock.send(view[sent[0] : sent[0] + (1 << 20)])

    threads = [threading.Thread(target=read, daemon=True), threading.Thread(target=write, daemon=True)]
    try:
        for thread in threads:
            thread.start()
        _wait_for(lambda: answered[0] >= 150, seconds=120)
        # what the client got through: the answered requests, those waiting, and the sockets' buffers (a few MB)
        assert sent[0] < 40e6, f"{sent[0] / 1e6:.1f} MB read by the server for {answered[0]} answers"
    finally:
        sock.close()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
