"""Load test of ``polytask serve``: throughput and latency under concurrent clients.

Why this exists: the server batches rows of concurrent requests into one model call
(``polytask.serve.batching``); whether that pays, and what a slim run buys over the full one,
only shows under load. This script starts the real app with uvicorn IN THIS PROCESS on
127.0.0.1 (a free port chosen by the OS; nothing else is contacted), then runs ``--clients``
concurrent HTTP clients (asyncio + httpx, one connection each) for ``--seconds`` per phase,
each sending requests of ``--batch-sizes`` rows built from real rows of the run's own test
split (valid or train when it has none), input columns only, NaN as null.

A phase is one (run, batch size) pair; ``--slim RUN2`` adds the same phases for a second run.
Per phase: requests, requests/s, rows/s, p50 / p99 latency (ms, client side: send to parsed
answer), errors (non-200 answers or transport errors) and the server's mean rows per model call
(from ``/healthz``), which shows how much batching happened. Each phase starts with a short
untimed warm-up. Every loop is bounded: by time (``--seconds``, at most 600) and by count
(``--max-requests`` per phase).

``--server process`` (the default) runs the server as the user would, ``polytask serve`` in a
process of its own, so that clients and server do not share a GIL; ``--server thread`` runs
uvicorn in a thread of this process (clients and server then contend for one interpreter, and
the numbers are a lower bound). Either way they share the machine's cores: on a 2-core machine
the clients take one of them.

Without ``--run`` it first trains a tiny run on the shipped census sample
(``examples/census_income_demo.yaml`` for ``--train-epochs`` epochs, into a temporary folder).

    python benchmarks/serve_load.py --run runs/demo --clients 8 --seconds 5
    python benchmarks/serve_load.py --run runs/demo --slim runs/demo-slim --batch-sizes 1 32 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
import yaml

import polytask
from polytask.data.tabular import load_splits
from polytask.inference.predictor import Predictor
from polytask.serve import ServeConfig, create_app

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "census_income_demo.yaml"
MAX_SECONDS = 600.0
WARMUP_REQUESTS = 20


def train_tiny(folder: Path, epochs: int) -> Path:
    """A short run of the demo config, so the script works with no run at hand."""
    spec = yaml.safe_load(DEMO.read_text())
    spec["train"]["epochs"] = epochs
    spec["train"]["early_stopping"] = {"patience": None}
    spec["train"].pop("diagnostics_every", None)
    print(f"training a tiny run ({epochs} epochs of {DEMO.name}) ...", file=sys.stderr)
    return polytask.train(spec, out=folder / "tiny", overwrite=True).run


def sample_rows(predictor: Predictor, limit: int = 2000) -> list[dict[str, Any]]:
    """Real rows from the run's own data, as a client would send them."""
    splits = load_splits(predictor.spec.data)
    frame = next(f for f in (splits.test, splits.valid, splits.train) if f is not None)
    columns = [c for c in predictor.preprocessor.input_columns if c in frame.columns]
    frame = frame[columns].head(limit)
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.to_dict("records")


class BackgroundServer:
    """uvicorn on 127.0.0.1 with an OS-chosen port, in a daemon thread."""

    def __init__(self, predictor: Predictor, config: ServeConfig) -> None:
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only
        # when the listening socket says TCP, and without it every answer waits ~40 ms for a
        # delayed ACK (Nagle).
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        app = create_app(predictor, config)
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise RuntimeError("the server did not start within 30 s")
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


class ServerProcess:
    """``polytask serve`` in a child process on 127.0.0.1, stopped on exit."""

    def __init__(self, run: Path, config: ServeConfig) -> None:
        with socket.socket() as probe:  # a free port, released for the child to take
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.command = [
            sys.executable,
            "-c",
            "from polytask.cli import app; app()",
            "serve",
            str(run),
            "--port",
            str(self.port),
            "--max-rows",
            str(config.max_rows),
            "--batch-window-ms",
            str(config.batch_window_ms),
            "--max-batch-rows",
            str(config.max_batch_rows),
            "--max-queue-rows",
            str(config.max_queue_rows),
            "--threads",
            str(config.threads),
            "--no-access-log",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("the server did not answer /healthz within 60 s")

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class RawConnection:
    """One keep-alive HTTP/1.1 connection spoken by hand over asyncio streams.

    Why not httpx here: a general client costs about a millisecond of Python per request, and
    eight of them in one process measure their own queueing instead of the server. This sends
    a fixed POST and reads the status line, the headers up to Content-Length, and the body.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


async def client_loop(
    connection: RawConnection,
    bodies: list[bytes],
    offset: int,
    deadline: float,
    max_requests: int,
    latencies: list[float],
    errors: list[str],
) -> None:
    """One client: send, wait for the parsed answer, repeat, until the deadline or the count."""
    index = offset
    while time.perf_counter() < deadline and len(latencies) + len(errors) < max_requests:
        body = bodies[index % len(bodies)]
        index += 1
        start = time.perf_counter()
        try:
            status, answer = await connection.post("/v1/predict", body)
            json.loads(answer)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as error:
            errors.append(type(error).__name__)
            await connection.close()
            await connection.open()
            continue
        if status != 200:
            errors.append(str(status))
        else:
            latencies.append(time.perf_counter() - start)


async def run_phase(
    url: str, bodies: list[bytes], clients: int, seconds: float, max_requests: int
) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    connections = [RawConnection("127.0.0.1", port) for _ in range(clients)]
    for connection in connections:
        await connection.open()
    for index, body in enumerate(bodies[:WARMUP_REQUESTS]):  # warm-up: caches, first calls
        await connections[index % clients].post("/v1/predict", body)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        before = (await http.get("/healthz")).json()["batching"]
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(
        *(
            client_loop(connection, bodies, k * 7, deadline, max_requests, latencies, errors)
            for k, connection in enumerate(connections)
        )
    )
    elapsed = time.perf_counter() - start
    for connection in connections:
        await connection.close()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        after = (await http.get("/healthz")).json()["batching"]
    calls = after["batches"] - before["batches"]
    rows_called = after["rows"] - before["rows"]
    ms = np.array(latencies) * 1000.0
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "seconds": round(elapsed, 2),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else math.nan,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else math.nan,
        "max_ms": float(ms.max()) if len(ms) else math.nan,
        "model_calls": calls,
        "mean_rows_per_call": rows_called / calls if calls > 0 else math.nan,
    }


def bodies_for(rows: list[dict[str, Any]], batch: int, count: int = 200) -> list[bytes]:
    """Request bodies of ``batch`` consecutive rows each, pre-encoded (not timed)."""
    return [
        json.dumps({"rows": [rows[(i * batch + j) % len(rows)] for j in range(batch)]}).encode()
        for i in range(count)
    ]


def load_test(run: Path, label: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    predictor = polytask.load(run)
    rows = sample_rows(predictor)
    parameters = sum(p.numel() for p in predictor.model.parameters())
    config = ServeConfig(
        max_rows=max(1024, *args.batch_sizes),
        batch_window_ms=args.window_ms,
        max_batch_rows=args.max_batch_rows,
        max_queue_rows=max(16384, *args.batch_sizes),
        threads=args.threads,
    )
    results = []
    server_kind = ServerProcess(run, config) if args.server == "process" else None
    with server_kind or BackgroundServer(predictor, config) as server:
        for batch in args.batch_sizes:
            phase = asyncio.run(
                run_phase(
                    server.url,
                    bodies_for(rows, batch),
                    args.clients,
                    args.seconds,
                    args.max_requests,
                )
            )
            phase.update(
                {
                    "model": label,
                    "run": str(run),
                    "arch": predictor.spec.model.arch,
                    "parameters": parameters,
                    "batch": batch,
                    "clients": args.clients,
                    "rows_per_s": phase["requests_per_s"] * batch,
                }
            )
            results.append(phase)
    return results


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    header = (
        f"{'model':<8} {'arch':<14} {'params':>8} {'batch':>5} {'requests':>8} {'req/s':>8} "
        f"{'rows/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'rows/call':>9}"
    )
    print(
        f"{args.clients} clients x {args.seconds:g} s per phase, batch window "
        f"{args.window_ms:g} ms, 127.0.0.1, server in a {args.server} of its own"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['model']:<8} {r['arch']:<14} {r['parameters']:>8} {r['batch']:>5} "
            f"{r['requests']:>8} {r['requests_per_s']:>8.1f} {r['rows_per_s']:>9.1f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>6} "
            f"{r['mean_rows_per_call']:>9.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="Run directory (default: train a tiny one).")
    parser.add_argument("--slim", type=Path, help="A second (slim) run to load-test too.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="Per phase; at most 600.")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="Per phase.")
    parser.add_argument("--window-ms", type=float, default=2.0)
    parser.add_argument("--max-batch-rows", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads.")
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument(
        "--server",
        choices=["process", "thread"],
        default="process",
        help="polytask serve in a child process, or uvicorn in a thread of this one.",
    )
    parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    args = parser.parse_args()
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS:g}]")
    if args.clients < 1 or min(args.batch_sizes) < 1 or args.max_requests < 1:
        parser.error("--clients, --batch-sizes and --max-requests must be at least 1")

    with tempfile.TemporaryDirectory(prefix="polytask-serve-load-") as temp:
        run = args.run or train_tiny(Path(temp), args.train_epochs)
        results = load_test(run, "full" if args.slim else "model", args)
        if args.slim:
            results += load_test(args.slim, "slim", args)
    if args.json:
        print(json.dumps(results, indent=2, default=lambda v: None))
    else:
        print_table(results, args)


if __name__ == "__main__":
    main()
