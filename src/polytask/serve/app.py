"""The FastAPI app that serves a loaded run, and ``run_server`` for the ``polytask serve`` command.

Endpoints: ``POST /v1/predict`` (rows in, per-task predictions out, batched across clients),
``GET /v1/tasks`` (the tasks, their outputs and the expected input columns) and ``GET /healthz``.

Errors are part of the contract: every refusal is JSON ``{"detail": one line, "errors": [...]}``
with a 4xx status, never a traceback, and the server keeps serving afterwards.

====================================  ======  ==================================================
problem                               status  detail names
====================================  ======  ==================================================
body is not JSON (or not UTF-8)       400     the parse error and its position
JSON nested too deeply                400     that
body too large (``max_body_bytes``)   413     the limit
body / rows not the expected shape    422     the place: ``rows``, ``rows[2]``, ``rows[0]['x']``
unknown column                        400     the columns, with did-you-mean
non-number in a numeric column        400     row index and column: ``rows[3]['age']``
number out of range, or infinite      400     row index and column
prediction not finite                 400     the row and the task
more rows than ``max_rows``           413     the count and the limit
queue full / shutting down            503     (with ``Retry-After: 1``), before the body is read
a bug                                 500     only "internal error"; the log has the trace
====================================  ======  ==================================================

Under pressure (:mod:`polytask.serve.admission`): a request is admitted or refused from its
headers, before its body is read; an admitted body is read with the size limit while it
streams (:mod:`polytask.serve.body`), and a large one is parsed and checked in a worker thread,
decoded row by row so that the event loop keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from polytask.config import MAX_THREADS
from polytask.errors import PolytaskError
from polytask.inference.predictor import Predictor
from polytask.serve.admission import Admission
from polytask.serve.batching import MicroBatcher, Overloaded
from polytask.serve.body import declared_length, parse_rows, read_body
from polytask.serve.inference import Row, ServedModel
from polytask.serve.schemas import ErrorResponse, PredictRequest, PredictResponse, RequestError

MIB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 32 * MIB
# Bodies at least this large are parsed in the worker thread, smaller ones at once (a
# thread hop costs more than parsing a few kilobytes).
THREADED_PARSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """Server limits and batching. ``max_rows`` bounds one request; ``max_batch_rows`` one
    model call; ``max_queue_rows`` the rows waiting (beyond it: 503, before the body is read);
    ``max_body_bytes`` one body (beyond it: 413) and ``max_body_bytes_in_flight`` the bodies
    of all admitted requests together (beyond it: 503; default four bodies at the limit);
    ``threads`` sets torch's intra-op threads for the worker (None: torch's default);
    ``allow_unknown_columns`` accepts (and ignores) columns the run does not know."""

    tasks: tuple[str, ...] | None = None
    max_rows: int = 1024
    batch_window_ms: float = 2.0
    max_batch_rows: int = 1024
    max_queue_rows: int = 16384
    threads: int | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_body_bytes_in_flight: int | None = None
    allow_unknown_columns: bool = False

    def __post_init__(self) -> None:
        checks = {
            "max_rows": self.max_rows >= 1,
            "batch_window_ms": 0 <= self.batch_window_ms <= 10_000,
            "max_batch_rows": self.max_batch_rows >= 1,
            "max_queue_rows": self.max_queue_rows >= self.max_rows,
            "threads": self.threads is None or 1 <= self.threads <= MAX_THREADS,
            "max_body_bytes": self.max_body_bytes >= 1,
            "max_body_bytes_in_flight": self.body_bytes_in_flight >= self.max_body_bytes,
        }
        for name, ok in checks.items():
            if not ok:
                value = getattr(self, name)
                hint = {
                    "max_queue_rows": " (at least max_rows)",
                    "max_body_bytes_in_flight": " (at least max_body_bytes)",
                }.get(name, "")
                raise PolytaskError(f"serve option {name}={value!r} is out of range{hint}")

    @property
    def body_bytes_in_flight(self) -> int:
        return self.max_body_bytes_in_flight or 4 * self.max_body_bytes


def _error(status: int, detail: str, errors: Sequence[str] = (), **headers: str) -> JSONResponse:
    body = ErrorResponse(detail=detail, errors=list(errors) or [detail]).model_dump()
    return JSONResponse(body, status_code=status, headers=headers or None)


def create_app(predictor: Predictor, config: ServeConfig | None = None) -> FastAPI:
    """Build the app; its lifespan starts and stops the micro-batcher."""
    config = config or ServeConfig()
    served = ServedModel(predictor, config.tasks, config.allow_unknown_columns)
    batcher: MicroBatcher[list[Row], list[dict[str, Any]]] = MicroBatcher(
        process=served.predict_many,
        size=len,
        window_ms=config.batch_window_ms,
        max_batch_rows=config.max_batch_rows,
        max_pending_rows=config.max_queue_rows,
        threads=config.threads,
    )

    admission = Admission(
        batcher.stats, config.max_queue_rows, config.max_body_bytes, config.body_bytes_in_flight
    )
    # One thread parses large bodies (made at start-up, like the batcher's worker): bodies
    # wait their turn holding only their bytes (which admission bounds), never several parsed
    # copies at once.
    parsers: list[ThreadPoolExecutor] = []

    def decode(body: bytes) -> list[Row]:
        rows = parse_rows(body, config.max_rows)
        served.check(rows)
        return rows

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        parsers.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="polytask-parse"))
        try:
            yield
        finally:
            await batcher.stop()
            parsers.pop().shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="polytask",
        summary=f"Predictions of run {served.name} ({', '.join(served.task_names)})",
        lifespan=lifespan,
    )
    app.state.served = served
    app.state.batcher = batcher
    app.state.admission = admission
    app.state.config = config

    @app.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError) -> JSONResponse:
        return _error(error.status, error.message, error.errors)

    @app.exception_handler(PolytaskError)
    async def user_error(_: Request, error: PolytaskError) -> JSONResponse:
        return _error(400, str(error))

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, error: Overloaded) -> JSONResponse:
        return _error(503, str(error), **{"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), **(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid request", [str(e.get("msg")) for e in error.errors()])

    @app.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception) -> JSONResponse:
        # Starlette re-raises after this answer, so the server log gets the traceback.
        return _error(500, "internal error; the server log has the details")

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses={code: {"model": ErrorResponse} for code in (400, 413, 422, 503)},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
            }
        },
    )
    async def predict(request: Request) -> JSONResponse:
        """Predict the served tasks for raw rows (batched with other clients' rows)."""
        if not batcher.running:
            raise Overloaded("the predictor is not running")
        declared = declared_length(request)
        if declared is not None and declared > config.max_body_bytes:
            raise RequestError(
                413, f"the body is {declared} bytes; the limit is {config.max_body_bytes}"
            )
        ticket = admission.admit(declared)  # before the body is read: a refusal costs nothing
        try:
            body = await read_body(request, config.max_body_bytes)
            if len(body) >= THREADED_PARSE_BYTES and parsers:
                loop = asyncio.get_running_loop()
                rows = await loop.run_in_executor(parsers[-1], decode, body)
            else:
                rows = decode(body)
            del body
            admission.queued(ticket)
            predictions = await batcher.submit(rows)
        finally:
            admission.release(ticket)
        return JSONResponse(
            {"predictions": predictions, "tasks": served.task_names, "model": served.name}
        )

    @app.get("/v1/tasks")
    async def tasks() -> dict[str, Any]:
        """The served tasks and their outputs; the input columns with their kinds."""
        return {
            **served.schema(),
            "limits": {
                "max_rows": config.max_rows,
                "max_body_bytes": config.max_body_bytes,
                "max_body_bytes_in_flight": config.body_bytes_in_flight,
                "batch_window_ms": config.batch_window_ms,
                "max_batch_rows": config.max_batch_rows,
                "max_queue_rows": config.max_queue_rows,
            },
        }

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 while the batcher runs (503 otherwise), with batching counters."""
        body = {
            "status": "ok" if batcher.running else "unavailable",
            "model": served.name,
            "tasks": served.task_names,
            "batching": batcher.stats.as_dict(),
            "admission": {
                "refused": admission.refused,
                "requests_being_read": admission.unqueued,
                "body_bytes_in_flight": admission.bytes_in_flight,
            },
        }
        return JSONResponse(body, status_code=200 if batcher.running else 503)

    return app


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or one line saying why it cannot be (a port out of
    range, an address that is not this machine's, a port already in use)."""
    if not 0 <= port <= 65535:
        raise PolytaskError(f"--port must be 0..65535 (got {port}); 0 picks a free port")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        raise PolytaskError(f"--host {host!r} is not an address here ({error})") from None
    family, kind, proto, _, address = infos[0]
    # proto=IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted connections (no ~40 ms
    # delayed-ACK wait per answer)
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise PolytaskError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


def run_server(
    run: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_rows: int = 1024,
    batch_window_ms: float = 2.0,
    max_batch_rows: int = 1024,
    max_queue_rows: int = 16384,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    threads: int | None = None,
    allow_unknown_columns: bool = False,
    access_log: bool = True,
    log_level: str = "info",
) -> None:
    """Load a run and serve it with uvicorn until interrupted. Option and run problems (and
    an address that cannot be listened on) raise :class:`PolytaskError` before the server
    starts, so the CLI reports them in one line."""
    import uvicorn

    config = ServeConfig(
        tasks=tuple(tasks) if tasks else None,
        max_rows=max_rows,
        batch_window_ms=batch_window_ms,
        max_batch_rows=max_batch_rows,
        max_queue_rows=max_queue_rows,
        max_body_bytes=max_body_bytes,
        threads=threads,
        allow_unknown_columns=allow_unknown_columns,
    )
    sock = listening_socket(host, port)
    try:
        app = create_app(Predictor.load(run), config)
        server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, access_log=access_log, log_level=log_level)
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
