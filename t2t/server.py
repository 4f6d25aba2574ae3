"""`t2t serve`: an HTTP JSON API over t2t.serving, on FastAPI + uvicorn, with dynamic batching.

Requests for any tasks wait in one queue; a single worker takes the first, gathers the others that arrive within
`wait_ms` (up to `batch_rows` rows and `batch_tokens` input tokens), and answers them in one model call on one
thread (the model is never run concurrently). A batch that fails is retried request by request, so a failing
request never fails its neighbours. Shutdown (SIGINT / SIGTERM): new requests get 503, those in flight finish.
Every error is one JSON object {"error": "..."}; tracebacks go to the server's log, never to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from t2t.errors import T2TError
from t2t.serving import (
    Answer,
    BadRow,
    NotFound,
    Predictor,
    Prepared,
    ServeLimits,
    choose_template,
    render_rows,
    result_record,
)

log = logging.getLogger("t2t.serve")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    template: str | None = None
    rows: list[Any]
    return_scores: bool = False
    return_input: bool = False


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "t2t_requests", "predict requests", ["task", "status"], registry=self.registry
        )
        self.rows = Counter("t2t_rows", "rows answered", ["task"], registry=self.registry)
        self.errors = Counter("t2t_row_errors", "rows refused", ["task"], registry=self.registry)
        self.inputs_cut = Counter("t2t_inputs_cut", "rows answered whose input was longer than max_input_tokens "
                                  "(the model read its first part)", ["task"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("t2t_request_latency_seconds", "predict request latency", ["task"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))  # fmt: skip
        self.batch_rows = Histogram("t2t_batch_rows", "rows per model call", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))  # fmt: skip
        self.queue = Gauge("t2t_queue_depth", "requests waiting for the model", registry=self.registry)
        self.health_checks = Counter("t2t_health_checks", "runs of every task's golden rows for /v1/health",
                                     registry=self.registry)  # fmt: skip
        self.in_progress = Gauge("t2t_requests_in_progress", "predict requests being read, rendered, queued or "
                                 "answered", registry=self.registry)  # fmt: skip
        self.turned_away = Counter("t2t_requests_turned_away", "predict requests answered 503 at capacity "
                                   "(max_concurrent)", registry=self.registry)  # fmt: skip
        self.abandoned = Counter("t2t_requests_abandoned", "queued requests whose client went away before the model "
                                 "reached them (not computed)", registry=self.registry)  # fmt: skip


@dataclass
class _Job:
    prepared: list[Prepared]
    future: asyncio.Future


class Batcher:
    """Coalesces queued requests into model calls on one worker thread."""

    def __init__(self, predictor: Predictor, metrics: Metrics, batching: bool = True) -> None:
        self.predictor, self.metrics, self.batching = predictor, metrics, batching
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="t2t-model")
        self.task: asyncio.Task | None = None
        # predict requests received but not yet queued (their bodies still being read or parsed): a batch being
        # gathered waits for them (up to wait_ms), and for nothing else
        self.arriving = 0
        self.last_jobs = 1  # requests in the last batch: under load the next batch waits for company

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    async def submit(self, prepared: list[Prepared]) -> list[Answer]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(prepared, future))
        self.metrics.queue.set(self.queue.qsize())
        return await future

    async def _gather(self) -> list[_Job]:
        limits = self.predictor.limits
        jobs = [await self.queue.get()]
        if not self.batching:
            return jobs
        rows = len(jobs[0].prepared)
        tokens = sum(p.tokens for p in jobs[0].prepared)
        deadline = time.monotonic() + limits.wait_ms / 1000
        while rows < limits.batch_rows and tokens < limits.batch_tokens:
            if self.queue.empty():
                left = deadline - time.monotonic()
                if left <= 0 or (self.arriving == 0 and self.last_jobs == 1):  # no load: answer now
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            else:
                job = self.queue.get_nowait()
            jobs.append(job)
            rows += len(job.prepared)
            tokens += sum(p.tokens for p in job.prepared)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            # a job whose client went away (its handler cancelled, and with it the future) costs no model time
            gone = [job for job in jobs if job.future.done()]
            if gone:
                self.metrics.abandoned.inc(len(gone))
                jobs = [job for job in jobs if not job.future.done()]
                if not jobs:
                    continue
            self.last_jobs = len(jobs)
            self.metrics.queue.set(self.queue.qsize())
            prepared = [p for job in jobs for p in job.prepared]
            self.metrics.batch_rows.observe(len(prepared))
            try:
                answers = await loop.run_in_executor(self.executor, self.predictor.answer, prepared)
            except Exception:
                if len(jobs) == 1:
                    log.exception("model call failed")
                    _settle(jobs[0].future, error=RuntimeError("the model call failed (see the server log)"))
                    continue
                for job in jobs:  # retried one by one: only the request that fails, fails
                    try:
                        _settle(job.future, await loop.run_in_executor(self.executor, self.predictor.answer,
                                                                       job.prepared))  # fmt: skip
                    except Exception:
                        log.exception("model call failed")
                        _settle(job.future, error=RuntimeError("the model call failed (see the server log)"))
                continue
            start = 0
            for job in jobs:
                _settle(job.future, answers[start : start + len(job.prepared)])
                start += len(job.prepared)


def _settle(future: asyncio.Future, value: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _declares_json(content_type: str) -> bool:
    """application/json or application/*+json, parameters (charset) aside, as FastAPI reads it."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Gate:
    """Pure ASGI middleware in front of the app: 503 while draining, and for a predict request beyond
    `max_concurrent` in progress (with Retry-After, its body not read); a body over `max_bytes` gets 413, by its
    Content-Length or while it streams (the body is read here, at most `max_bytes` of it, and handed on whole);
    predict requests counted as arriving until their handler queues them; a request whose client goes away before
    its answer is cancelled (a queued one never reaches the model); an error that escapes the app is logged, and
    the client gets one JSON line if nothing was sent yet."""

    def __init__(self, app: Any, state: dict, limits: ServeLimits, metrics: Metrics) -> None:
        self.app, self.state, self.metrics = app, state, metrics
        self.max_bytes, self.max_seconds = limits.max_body_bytes, limits.max_body_seconds
        self.max_concurrent = limits.max_concurrent
        self.in_progress = 0  # predict requests past the capacity check, not yet answered

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.state["draining"]:
            await _error(503, "the server is shutting down")(scope, receive, send)
            return
        if scope.get("path") != "/v1/predict":
            await self._handle(scope, receive, send)
            return
        if self.in_progress >= self.max_concurrent:
            self.metrics.turned_away.inc()
            busy = _error(503, f"the server is at capacity: {self.in_progress} requests in progress "
                               f"(max_concurrent {self.max_concurrent}); retry after a second")  # fmt: skip
            busy.headers["retry-after"] = "1"
            await busy(scope, receive, send)
            return
        self.in_progress += 1
        self.metrics.in_progress.set(self.in_progress)
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.in_progress -= 1
                self.metrics.in_progress.set(self.in_progress)

        try:
            await self._handle(scope, receive, send, release)
        finally:
            release()

    async def _handle(self, scope: dict, receive: Any, send: Any, release: Any = lambda: None) -> None:
        """`release`: called as the answer's last part is sent, before the client can send its next request on
        the connection (this task still has its cleanup to run then)."""
        too_large = _error(
            413, f"the request body is over the limit of {self.max_bytes:,} bytes (max_body_bytes)"
        )
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            release()
            await too_large(scope, receive, send)
            return
        pieces, size, more = [], 0, True
        deadline = asyncio.get_running_loop().time() + self.max_seconds
        while more:
            try:
                # a client that sends its headers and stalls would hold the connection for good
                event = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                release()
                await _error(408, f"the request body did not arrive whole within {self.max_seconds:g} s "
                                  "(max_body_seconds)")(scope, receive, send)  # fmt: skip
                return
            if event["type"] != "http.request":  # the client went away
                return
            pieces.append(event.get("body", b""))
            size += len(pieces[-1])
            if size > self.max_bytes:
                release()
                await too_large(scope, receive, send)
                return
            more = event.get("more_body", False)
        # joined once (adding each piece to a growing bytes copied the body over and over)
        body = b"".join(pieces)
        handed, started, finished = False, False, False

        async def replay() -> dict:
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def watch(message: dict) -> None:
            nonlocal started, finished
            started = started or message["type"] == "http.response.start"
            finished = message["type"] == "http.response.body" and not message.get("more_body", False)
            if finished:
                release()
            await send(message)

        async def gone() -> None:
            """Returns when the client goes away before its answer is sent (the body has been read, so the server's
            next message is the disconnect)."""
            while (await receive())["type"] != "http.disconnect" or finished:
                if finished:
                    await asyncio.Event().wait()  # answered: nothing to watch

        batcher = self.state["batcher"]
        state = scope.setdefault("state", {})
        state["arriving"] = scope.get("path") == "/v1/predict"
        batcher.arriving += state["arriving"]
        handler = asyncio.ensure_future(self.app(scope, replay, watch))
        watcher = asyncio.ensure_future(gone())
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done():  # the client went away: its work is cancelled, its queued job dropped
                handler.cancel()
            try:
                await handler
            except asyncio.CancelledError:
                if not watcher.done():
                    raise  # this request itself was cancelled (the server stopping)
        except Exception:
            log.exception("unexpected error on %s", scope.get("path"))
            if not started:
                await _error(500, INTERNAL)(scope, receive, send)
        finally:
            watcher.cancel()
            if not handler.done():
                handler.cancel()
            batcher.arriving -= state["arriving"]


INTERNAL = "internal error (logged by the server)"
HEALTH_FRESH_SECONDS = 5.0  # how long a /v1/health report is served before the golden rows run again


def create_app(predictor: Predictor, batching: bool = True) -> FastAPI:
    metrics = Metrics()
    state: dict[str, Any] = {"draining": False, "batcher": None}

    # requests are checked, rendered and tokenized here, off the event loop: a request of long rows took it for a
    # second, and every other client with it (a liveness probe's /healthz included)
    preparing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="t2t-prepare")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = state["batcher"] = Batcher(predictor, metrics, batching)
        batcher.start()
        yield
        state["draining"] = True
        await batcher.stop()
        preparing.shutdown(wait=True)

    app = FastAPI(
        title="t2t", description="t2t's tasks over one model: routed, batched, watched", lifespan=lifespan
    )

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, INTERNAL)  # Gate logs it

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # routing's own answers (an unknown path, a method a path does not take) in t2t's error shape
        if exc.status_code == 404:
            message = f"no such endpoint: {request.url.path} (see /docs)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            # FastAPI's answer to any error but a JSONDecodeError while reading the body
            message = "the request body is JSON nested too deeply to read"
        else:
            message = str(exc.detail)
        response = _error(exc.status_code, message)
        for name, value in (exc.headers or {}).items():  # 405's Allow
            response.headers[name] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        kind = request.headers.get("content-type", "")
        if request.method == "POST" and not _declares_json(kind):
            # FastAPI reads a body as JSON only when its content type says so (a browser's form post cannot
            # reach the model): say that, not "Input should be a valid dictionary"
            return _error(415, f"send the body as JSON with the header content-type: application/json (it came "
                               f"{'as ' + repr(kind) if kind else 'without a content-type'})")  # fmt: skip
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "the request body is not valid JSON")
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"{where or 'body'}: {first.get('msg', 'invalid request')}")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "model_loaded": predictor.model is not None, "device": predictor.device,
                "dtype": predictor.dtype, "tasks": len(predictor.task_names)}  # fmt: skip

    @app.get("/v1/tasks")
    async def tasks() -> dict:
        return {"tasks": [predictor.describe(name) for name in predictor.task_names]}

    checked: dict[str, Any] = {"body": None, "at": 0.0}
    checking = asyncio.Lock()  # bound to the server's loop when first awaited

    @app.get("/v1/health")
    async def health() -> JSONResponse:
        # one check at a time, its report served for HEALTH_FRESH_SECONDS: probes and dashboards calling at once
        # share a check instead of queueing one run of every task's golden rows each before the model's requests
        async with checking:
            if checked["body"] is None or time.monotonic() - checked["at"] > HEALTH_FRESH_SECONDS:
                loop = asyncio.get_running_loop()
                batcher = state["batcher"]
                report = {}
                for name in predictor.task_names:  # on the model's thread, between batches
                    report[name] = await loop.run_in_executor(batcher.executor, predictor.health, name)
                unhealthy = [n for n, r in report.items() if r["healthy"] is False]
                checked["body"] = {"healthy": not unhealthy, "unhealthy": unhealthy, "tasks": report}
                checked["at"] = time.monotonic()
                metrics.health_checks.inc()
        body = {**checked["body"], "checked_seconds_ago": round(time.monotonic() - checked["at"], 3)}
        return JSONResponse(body, status_code=200 if body["healthy"] else 503)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/predict")
    async def predict(body: PredictRequest, request: Request) -> JSONResponse:
        started = time.perf_counter()
        prepared_or_error = await asyncio.get_running_loop().run_in_executor(preparing, _prepare, body)
        batcher = state["batcher"]
        batcher.arriving -= request.state.arriving  # queued (or answered with an error) from here on
        request.state.arriving = False
        if isinstance(prepared_or_error, JSONResponse):
            return prepared_or_error
        task, template, prepared = prepared_or_error
        good = [p for p in prepared if isinstance(p, Prepared)]
        answers = iter(await batcher.submit(good))
        results = [next(answers) if isinstance(p, Prepared) else p for p in prepared]
        metrics.rows.labels(task.name).inc(len(good))
        metrics.inputs_cut.labels(task.name).inc(sum(p.cut for p in good))
        metrics.requests.labels(task.name, "200").inc()
        metrics.latency.labels(task.name).observe(time.perf_counter() - started)
        return JSONResponse({
            "task": task.name, "template": template, "answered": len(good), "refused": len(prepared) - len(good),
            "results": [result_record(r, body.return_scores, body.return_input) for r in results],
        })  # fmt: skip

    def _prepare(body: PredictRequest) -> JSONResponse | tuple:
        """Route, check and render a request: (task, template, prepared rows), or the error response."""
        limits = predictor.limits
        if len(body.rows) > limits.max_rows:
            metrics.requests.labels(
                body.task if body.task in predictor.task_names else "unknown", "413"
            ).inc()
            return _error(413, f"{len(body.rows)} rows is over the limit of {limits.max_rows} rows per request "
                               "(max_rows)")  # fmt: skip
        if not body.rows:
            return _error(422, "rows: give at least one row")
        try:
            task = predictor.task(body.task)
            template = choose_template(task, body.template)
        except NotFound as exc:
            metrics.requests.labels("unknown", "404").inc()
            return _error(404, exc.message)
        except T2TError as exc:
            return _error(422, str(exc))
        prepared = predictor.prepare(task, template, render_rows(task, template, body.rows, limits))
        choices = sum(len(p.choices) for p in prepared if isinstance(p, Prepared) and p.choices is not None)
        if choices > limits.max_choices:
            metrics.requests.labels(task.name, "413").inc()
            return _error(413, f"the rows hold {choices:,} answer choices in all, over the limit of "
                               f"{limits.max_choices:,} per request (max_choices): send fewer rows a request")  # fmt: skip
        refused = sum(isinstance(p, BadRow) for p in prepared)
        metrics.errors.labels(task.name).inc(refused)
        if refused == len(prepared):
            metrics.requests.labels(task.name, "422").inc()
            return _error(422, f"no row can be answered; {prepared[0]}")
        return task, template, prepared

    return Gate(app, state, predictor.limits, metrics)


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), for `serve`: taken before the model loads, so that a host that does not
    resolve or a port in use is one line (uvicorn logged it and exited with 3, after saying it served there)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise T2TError(f"--host {host}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise T2TError(f"--host {host} --port {port}: cannot listen there: {exc.strerror or exc}") from None
    return sock


MAX_HEAD_BYTES = 64 * 1024  # a request's line and headers (nginx reads 32 KB at most by default)
# requests a client may send ahead on one connection (HTTP/1.1 pipelining) before the server stops reading it
MAX_PIPELINED = 8


def bounded_protocol(max_seconds: float, max_head_bytes: int = MAX_HEAD_BYTES) -> type:
    """uvicorn's httptools protocol with bounds on a request's head (its line and headers), which uvicorn reads
    without any: a head over `max_head_bytes` gets 431, one that has not arrived whole `max_seconds` after the
    connection opened (on a kept-alive connection, after its first byte) gets 408 (one JSON line each, the
    connection closed). Without them one client sending a header without end
    grew the server's memory by twice what it sent (300 MB sent: 1.1 GB), and one sending it slowly held its
    connection for good. Requests sent ahead on one connection (pipelined) are read until MAX_PIPELINED wait, then
    the connection is not read until they are answered: uvicorn resumed reading at every read of a body, so a client
    pipelining without end was read without end (97 MB sent in 10 s while 278 requests were answered)."""
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Flow(FlowControl):
        def __init__(self, transport: Any, protocol: Any) -> None:
            super().__init__(transport)
            self.protocol = protocol

        def resume_reading(self) -> None:
            if len(self.protocol.pipeline) < MAX_PIPELINED:
                super().resume_reading()

    class BoundedHead(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.head_bytes, self.in_head, self.head_timer, self.refused = 0, True, None, False

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.flow = Flow(transport, self)
            # from the connection's start: one that never sends a byte held its file descriptor for good, and
            # a thousand of them left the server none to accept anyone with
            self._start_timer()

        def _start_timer(self) -> None:
            self.head_timer = self.loop.call_later(max_seconds, self._refuse, 408,
                                                   f"the request's line and headers did not arrive whole within "
                                                   f"{max_seconds:g} s (max_body_seconds)")  # fmt: skip

        def data_received(self, data: bytes) -> None:
            # what a refused client still sends is read and dropped until the connection closes
            if self.refused:
                return
            if self.in_head:
                if self.head_timer is None:  # a later request's head on a kept-alive connection
                    self._start_timer()
                self.head_bytes += len(data)
            super().data_received(data)
            if self.in_head and self.head_bytes > max_head_bytes and not self.transport.is_closing():
                self._refuse(
                    431, f"the request's line and headers are over the limit of {max_head_bytes:,} bytes"
                )

        def on_headers_complete(self) -> None:
            self._stop_timer()
            self.in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.head_bytes, self.in_head = 0, True  # the next request's head, if one comes

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            super().connection_lost(exc)

        def _stop_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _refuse(self, status: int, message: str) -> None:
            self._stop_timer()
            if self.transport.is_closing():
                return
            body = json.dumps({"error": message}).encode()
            reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))  # fmt: skip
            # closed at once, the socket would answer what the client still sends with a reset, which can discard
            # this answer before the client reads it: the answer ends the sending side, the rest is dropped for a
            # second, then the connection closes
            self.refused = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(1.0, self.transport.close)

    return BoundedHead


def raise_open_files_limit(target: int = 65536) -> None:
    """Raise this process's soft limit on open files (often 1,024, each connection taking one) towards `target`,
    within the hard limit, as servers do: at 1,024, a thousand clients connected left the server none to accept
    another."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def serve(
    predictor: Predictor,
    host: str,
    port: int,
    batching: bool = True,
    graceful_seconds: float = 30,
    sock: socket.socket | None = None,
) -> None:
    """Run the API until SIGINT / SIGTERM; requests in flight finish (up to `graceful_seconds`). `sock`: the
    socket `bind` took (else bound here)."""
    import uvicorn

    sock = sock if sock is not None else bind(host, port)

    app = create_app(predictor, batching)
    try:
        protocol: dict[str, Any] = {"http": bounded_protocol(predictor.limits.max_body_seconds)}
    except ImportError:
        # no httptools (uvicorn without its [standard] extra): h11 bounds the head's size itself
        protocol = {"http": "h11", "h11_max_incomplete_event_size": MAX_HEAD_BYTES}
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=graceful_seconds,
                            access_log=False, **protocol)  # fmt: skip

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state["draining"] = True  # new requests: 503; those in flight go on
            super().handle_exit(sig, frame)

    raise_open_files_limit()
    print(f"t2t serve: {len(predictor.task_names)} tasks on http://{host}:{port} (docs at /docs), "
          f"{predictor.device} {predictor.dtype}, batching {'on' if batching else 'off'}", flush=True)  # fmt: skip
    Server(config).run(sockets=[sock])


def wait_until_serving(url: str, process: Any = None, seconds: float = 120) -> None:
    """Block until the t2t server at `url` answers /healthz (for scripts and tests that start one); T2TError when
    `process` (a Popen) exits first or `seconds` pass."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise T2TError(f"the server exited with {process.returncode}: {output[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise T2TError(f"the server at {url} did not answer /healthz within {seconds:g} s")
