"""The FastAPI app that serves a loaded run, and ``run_server`` for the ``polytask serve`` command.

Endpoints: ``POST /v1/predict`` (rows in, per-task predictions out, batched across clients),
``GET /v1/tasks`` (the tasks, their outputs and the expected input columns) and ``GET /healthz``.

Errors are part of the contract: every refusal is JSON ``{"detail": one line, "errors": [...]}``
with a 4xx status, never a traceback, and the server keeps serving afterwards.

====================================  ======  ==================================================
problem                               status  detail names
====================================  ======  ==================================================
body is not JSON (or not UTF-8)       400     the parse error and its position
body too large (``max_body_bytes``)   413     the limit
body / rows not the expected shape    422     the place: ``rows``, ``rows[2]``, ``rows[0]['x']``
unknown column                        400     the columns, with did-you-mean
non-number in a numeric column        400     row index and column: ``rows[3]['age']``
more rows than ``max_rows``           413     the count and the limit
queue full / shutting down            503     (with ``Retry-After: 1``)
a bug                                 500     only "internal error"; the log has the trace
====================================  ======  ==================================================

The body is read and parsed here rather than by FastAPI's automatic body model, so that a
malformed body is a 400 that says what is wrong with it (FastAPI reports a 422 "JSON decode
error", and treats a JSON body sent as ``text/plain`` as a string) and so that the size limit
applies while reading, before anything is parsed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from polytask.artifacts.predictor import Predictor
from polytask.errors import PolytaskError
from polytask.serve.batching import MicroBatcher, Overloaded
from polytask.serve.inference import MAX_REPORTED, Row, ServedModel
from polytask.serve.schemas import (
    ErrorResponse,
    PredictRequest,
    PredictResponse,
    RequestError,
    describe_errors,
)


@dataclass(frozen=True)
class ServeConfig:
    """Server limits and batching. ``max_rows`` bounds one request; ``max_batch_rows`` one
    model call; ``max_queue_rows`` the rows waiting (beyond it: 503); ``threads`` sets
    torch's intra-op threads for the worker (None: torch's default)."""

    tasks: tuple[str, ...] | None = None
    max_rows: int = 1024
    batch_window_ms: float = 2.0
    max_batch_rows: int = 1024
    max_queue_rows: int = 16384
    threads: int | None = None
    max_body_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        checks = {
            "max_rows": self.max_rows >= 1,
            "batch_window_ms": 0 <= self.batch_window_ms <= 10_000,
            "max_batch_rows": self.max_batch_rows >= 1,
            "max_queue_rows": self.max_queue_rows >= self.max_rows,
            "threads": self.threads is None or self.threads >= 1,
            "max_body_bytes": self.max_body_bytes >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                value = getattr(self, name)
                hint = " (at least max_rows)" if name == "max_queue_rows" else ""
                raise PolytaskError(f"serve option {name}={value!r} is out of range{hint}")


def _error(status: int, detail: str, errors: Sequence[str] = (), **headers: str) -> JSONResponse:
    body = ErrorResponse(detail=detail, errors=list(errors) or [detail]).model_dump()
    return JSONResponse(body, status_code=status, headers=headers or None)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {int(declared)} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, max_rows: int) -> list[Row]:
    """Bytes -> validated rows, or a :class:`RequestError` saying what is wrong and where."""
    if not body.strip():
        raise RequestError(400, 'the body is empty; send JSON {"rows": [{...}, ...]}')
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        raise RequestError(400, "malformed JSON: the body is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise RequestError(
            400,
            f"malformed JSON: {error.msg} at line {error.lineno} column {error.colno}",
        ) from None
    if isinstance(payload, dict) and isinstance(payload.get("rows"), list):
        count = len(payload["rows"])
        if count > max_rows:  # before validating thousands of rows only to refuse them
            raise RequestError(413, f"{count} rows in one request; the limit is {max_rows}")
    try:
        return PredictRequest.model_validate(payload).rows
    except ValidationError as error:
        problems = describe_errors(error)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RequestError(422, problems[0] + more, problems[:MAX_REPORTED]) from None


def create_app(predictor: Predictor, config: ServeConfig | None = None) -> FastAPI:
    """Build the app; its lifespan starts and stops the micro-batcher."""
    config = config or ServeConfig()
    served = ServedModel(predictor, config.tasks)
    batcher: MicroBatcher[list[Row], list[dict[str, Any]]] = MicroBatcher(
        process=served.predict_many,
        size=len,
        window_ms=config.batch_window_ms,
        max_batch_rows=config.max_batch_rows,
        max_pending_rows=config.max_queue_rows,
        threads=config.threads,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="polytask",
        summary=f"Predictions of run {served.name} ({', '.join(served.task_names)})",
        lifespan=lifespan,
    )
    app.state.served = served
    app.state.batcher = batcher
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
        rows = _parse(await _read_body(request, config.max_body_bytes), config.max_rows)
        served.check(rows)
        predictions = await batcher.submit(rows)
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
                "batch_window_ms": config.batch_window_ms,
                "max_batch_rows": config.max_batch_rows,
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
        }
        return JSONResponse(body, status_code=200 if batcher.running else 503)

    return app


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
    threads: int | None = None,
    access_log: bool = True,
    log_level: str = "info",
) -> None:
    """Load a run and serve it with uvicorn until interrupted. Option and run problems raise
    :class:`PolytaskError` before the server starts, so the CLI reports them in one line."""
    import uvicorn

    config = ServeConfig(
        tasks=tuple(tasks) if tasks else None,
        max_rows=max_rows,
        batch_window_ms=batch_window_ms,
        max_batch_rows=max_batch_rows,
        max_queue_rows=max_queue_rows,
        threads=threads,
    )
    from polytask.api import load

    app = create_app(load(run), config)
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level=log_level)
