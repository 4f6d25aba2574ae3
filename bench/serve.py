"""Throughput and latency of `t2t serve`, dynamic batching on and off, at concurrency 1, 8 and 64.

    python bench/serve.py --model DEMO_OUT/model [--requests 256]
    python bench/serve.py --model DEMO_OUT/model --liveness    # /healthz while long requests are prepared

Starts the server twice on the demo model (the demo mixture's tasks), each time alone on the machine, and sends
one-row requests for three tasks (a ranked one, a generated one, one with choices from the row) from C client
threads. Prints rows/s and p50 / p99 latency per setting, and the speed-up of batching at each concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from t2t.server import wait_until_serving

REPO = Path(__file__).resolve().parents[1]
REQUESTS = [
    ("sentiment", {"text": "the plum was sweet and fun"}),
    ("add_numbers", {"a": 38, "b": 4}),
    ("larger_number", {"a": 76, "b": 94}),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: Path, batching: bool, wait_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "t2t", "serve", "--model", str(model), "--mixture", "demo", "--port", str(port),
               "--device", "cpu", "--wait-ms", str(wait_ms)] + ([] if batching else ["--no-batching"])  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, process, 120)
    return process, url


async def _client(host: str, port: int, bodies: list[bytes], latencies: list[float]) -> None:
    """One keep-alive HTTP/1.1 connection sending its requests one after another (a lean client, so that the
    figures are the server's: httpx's own cost per request is of the order of the server's on 2 cores)."""
    reader, writer = await asyncio.open_connection(host, port)
    for body in bodies:
        started = time.perf_counter()
        writer.write(b"POST /v1/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"the server answered {head.splitlines()[0]!r}")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
    writer.close()


def load(url: str, concurrency: int, requests: int) -> dict:
    host, port = url.removeprefix("http://").split(":")
    bodies = [json.dumps({"task": task, "rows": [row]}).encode() for task, row in REQUESTS]
    per_client = [[bodies[(c + i * concurrency) % len(bodies)] for i in range(requests // concurrency)]
                  for c in range(concurrency)]  # fmt: skip

    async def run(work: list[list[bytes]]) -> tuple[float, list[float]]:
        latencies: list[float] = []
        started = time.perf_counter()
        await asyncio.gather(*(_client(host, int(port), w, latencies) for w in work))
        return time.perf_counter() - started, latencies

    asyncio.run(run([[b] for b in bodies]))  # warm up
    took, latencies = asyncio.run(run(per_client))
    latencies.sort()
    return {"rows_s": len(latencies) / took, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}  # fmt: skip


def liveness(model: Path, heavy: int = 3) -> dict:
    """/healthz latency (a liveness probe's) while the server answers `heavy` requests of 200 long rows (19,000
    characters each: checking, rendering and tokenizing them takes about a second of CPU)."""
    import threading
    import urllib.request

    process, url = start(model, True, 5.0)
    text = ("the plum was sweet and fun " * 800)[:19000]
    body = json.dumps({"task": "sentiment", "rows": [{"text": f"{text} {i}"} for i in range(200)]}).encode()
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(f"{url}/healthz", timeout=60) as response:
                response.read()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)

    thread = threading.Thread(target=probe)
    try:
        thread.start()
        time.sleep(0.5)
        for _ in range(heavy):
            request = urllib.request.Request(f"{url}/v1/predict", body, {"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=300) as response:
                response.read()
    finally:
        done.set()
        thread.join()
        process.terminate()
        process.wait(timeout=60)
    latencies.sort()
    return {"probes": len(latencies), "p50_ms": 1000 * statistics.median(latencies),
            "max_ms": 1000 * latencies[-1]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--wait-ms", type=float, default=5.0)
    parser.add_argument("--liveness", action="store_true",
                        help="only /healthz's latency while the server answers requests of long rows")  # fmt: skip
    args = parser.parse_args()
    if args.liveness:
        r = liveness(args.model)
        print(f"/healthz during 3 requests of 200 rows of 19,000 characters: {r['probes']} probes, p50 "
              f"{r['p50_ms']:.1f} ms, max {r['max_ms']:.1f} ms")  # fmt: skip
        return
    if args.requests < 64:  # every client of the largest concurrency sends at least one
        parser.error("--requests must be at least 64, the largest concurrency measured")
    results = {}
    for batching in (True, False):
        process, url = start(args.model, batching, args.wait_ms)
        try:
            for concurrency in (1, 8, 64):
                results[batching, concurrency] = load(url, concurrency, args.requests)
        finally:
            process.terminate()
            process.wait(timeout=60)
    print("| concurrency | batching | rows/s | p50 ms | p99 ms |")
    print("|---:|---|---:|---:|---:|")
    for concurrency in (1, 8, 64):
        for batching in (True, False):
            r = results[batching, concurrency]
            print(f"| {concurrency} | {'on' if batching else 'off'} | {r['rows_s']:.0f} | {r['p50_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} |")  # fmt: skip
    for concurrency in (1, 8, 64):
        ratio = results[True, concurrency]["rows_s"] / results[False, concurrency]["rows_s"]
        print(f"batching speed-up at concurrency {concurrency}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
