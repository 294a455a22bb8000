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

``--pressure`` measures the server under pressure instead (``polytask serve`` in a child
process, server defaults): its capacity in closed loop with ``--pressure-rows``-row requests,
then an open loop offering ``--overload`` times that rate for ``--seconds`` (accepted and
refused requests per second, latency percentiles of each), then ``--bodies`` concurrent bodies
of ``--body-mib`` MiB each (statuses and the server process's peak resident memory, measured
from a reset of its high-water mark). ``--baseline-src DIR`` repeats all of it with the server
of another source tree (``PYTHONPATH=DIR``; e.g. ``git archive main src`` unpacked), so that
before and after are measured in one run on the same machine. ``--output FILE`` writes the
JSON (with the command and the machine) there.

    python benchmarks/serve_load.py --pressure --run runs/demo --seconds 20 \\
        --output docs/results/serve_pressure.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shlex
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
from _machine import machine_info
from _pressure import (
    concurrent_bodies,
    large_body,
    open_loop,
    reset_peak,
    rss_bytes,
)

import polytask
from polytask.data.tabular import load_splits
from polytask.inference.predictor import Predictor
from polytask.serve import ServeConfig, create_app

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "census_income_demo.yaml"
MAX_SECONDS = 600.0
PRESSURE_SETTINGS = (
    "clients",
    "seconds",
    "pressure_rows",
    "capacity_seconds",
    "overload",
    "max_in_flight",
    "bodies",
    "body_mib",
    "threads",
)
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
    """``polytask serve`` in a child process on 127.0.0.1, stopped on exit; ``src`` runs the
    polytask of another source tree (put first on PYTHONPATH) instead of this one."""

    def __init__(self, run: Path, config: ServeConfig, src: Path | None = None) -> None:
        self.src = src
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

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> ServerProcess:
        env = dict(os.environ)
        if self.src is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(self.src.resolve()), *filter(None, [env.get("PYTHONPATH")])]
            )
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, env=env)
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


def train_tiny_with(src: Path, folder: Path, epochs: int) -> Path:
    """The tiny run, trained by the polytask of another source tree (a run's files are read
    by the code that wrote them)."""
    spec = yaml.safe_load(DEMO.read_text())
    spec["train"].update(epochs=epochs, early_stopping={"patience": None})
    spec["train"].pop("diagnostics_every", None)
    config = folder / "baseline.yaml"
    config.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    command = "from polytask.cli import app; app()"
    out = folder / "baseline-run"
    print(f"training the tiny run with {src} ...", file=sys.stderr)
    subprocess.run(
        [sys.executable, "-c", command, "train", str(config), "--out", str(out), "--quiet"],
        env=env,
        check=True,
        timeout=1800,
    )
    return out


def pressure_test(
    run: Path, args: argparse.Namespace, src: Path | None, predictor: Predictor
) -> dict[str, Any]:
    """Capacity, then an open loop at ``--overload`` times it, then concurrent large bodies,
    against ``polytask serve`` (of ``src`` when given) with its default limits. The request
    bodies come from ``predictor`` (this tree's load of the run), the same for every server."""
    rows = sample_rows(predictor)
    body = bodies_for(rows, args.pressure_rows, count=1)[0]
    config = ServeConfig(threads=args.threads)
    column = (predictor.preprocessor.categorical or predictor.preprocessor.numeric)[0]
    large = large_body(column, rows=1000, size=round(args.body_mib * 1024 * 1024))
    result: dict[str, Any] = {"server_source": str(src) if src else "this tree", "run": str(run)}
    with ServerProcess(run, config, src) as server:
        capacity = asyncio.run(
            run_phase(server.url, [body], args.clients, args.capacity_seconds, args.max_requests)
        )
        result["capacity"] = {
            key: capacity[key] for key in ("requests", "errors", "requests_per_s", "p50_ms")
        }
        rate = args.overload * capacity["requests_per_s"]
        result["overload"] = asyncio.run(
            open_loop("127.0.0.1", server.port, body, rate, args.seconds, args.max_in_flight)
        )
        reset_peak(server.pid)
        before = rss_bytes(server.pid)
        memory = asyncio.run(concurrent_bodies("127.0.0.1", server.port, large, args.bodies))
        after = rss_bytes(server.pid)
        result["memory"] = {
            **memory,
            "rss_before_mib": before["rss"] / 2**20,
            "peak_rss_mib": after["peak_rss"] / 2**20,
            "peak_growth_mib": (after["peak_rss"] - before["rss"]) / 2**20,
        }
        after_all = asyncio.run(run_phase(server.url, [body], 1, 1.0, 20))
        result["answers_afterwards"] = after_all["errors"] == 0 and after_all["requests"] > 0
    return result


def print_pressure(report: dict[str, Any]) -> None:
    for label, result in report["servers"].items():
        capacity, overload, memory = result["capacity"], result["overload"], result["memory"]
        accepted, refused = overload["accepted_latency"], overload["refused_latency"]

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        print(
            f"{label}: capacity {capacity['requests_per_s']:.1f} req/s; offered "
            f"{overload['offered_per_s']:.1f}/s -> accepted {overload['accepted_per_s']:.1f}/s "
            f"(p50 {ms(accepted['p50_ms'])} ms, p99 {ms(accepted['p99_ms'])} ms), refused "
            f"{overload['refused_per_s']:.1f}/s (p50 {ms(refused['p50_ms'])} ms), other "
            f"{overload['other']}, not sent {overload['not_sent_client_saturated']}; "
            f"{memory['bodies']} x {memory['body_bytes'] / 2**20:.0f} MiB bodies: "
            f"{memory['statuses']}, peak RSS {memory['peak_rss_mib']:.0f} MiB "
            f"(+{memory['peak_growth_mib']:.0f}); answers afterwards: "
            f"{result['answers_afterwards']}"
        )


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
    parser.add_argument("--output", type=Path, help="Also write the JSON here.")
    pressure = parser.add_argument_group("--pressure")
    pressure.add_argument("--pressure", action="store_true", help="Overload and memory test.")
    pressure.add_argument("--pressure-rows", type=int, default=1024, help="Rows per request.")
    pressure.add_argument("--capacity-seconds", type=float, default=10.0)
    pressure.add_argument("--overload", type=float, default=2.0, help="Times the capacity.")
    pressure.add_argument("--max-in-flight", type=int, default=256)
    pressure.add_argument("--bodies", type=int, default=64, help="Concurrent large bodies.")
    pressure.add_argument("--body-mib", type=float, default=32.0)
    pressure.add_argument("--baseline-src", type=Path, help="Also test this source tree.")
    args = parser.parse_args()
    if not 0 < args.seconds <= MAX_SECONDS or not 0 < args.capacity_seconds <= MAX_SECONDS:
        parser.error(f"--seconds and --capacity-seconds must be in (0, {MAX_SECONDS:g}]")
    if args.clients < 1 or min(args.batch_sizes) < 1 or args.max_requests < 1:
        parser.error("--clients, --batch-sizes and --max-requests must be at least 1")
    if not (0 < args.overload <= 100 and 1 <= args.bodies <= 1024 and 0 < args.body_mib <= 1024):
        parser.error("--overload in (0, 100], --bodies 1..1024, --body-mib in (0, 1024]")

    report: Any
    machine = machine_info("fastapi", "uvicorn")  # the load average at the start
    with tempfile.TemporaryDirectory(prefix="polytask-serve-load-") as temp:
        run = args.run or train_tiny(Path(temp), args.train_epochs)
        if args.pressure:
            predictor = polytask.load(run)
            servers = {"this tree": pressure_test(run, args, None, predictor)}
            if args.baseline_src:
                baseline_run = train_tiny_with(args.baseline_src, Path(temp), args.train_epochs)
                servers[f"baseline ({args.baseline_src})"] = pressure_test(
                    baseline_run, args, args.baseline_src, predictor
                )
            report = {
                "benchmark": "serve_pressure",
                "command": "python " + shlex.join(["benchmarks/serve_load.py", *sys.argv[1:]]),
                "machine": machine,
                "run": str(args.run) if args.run else "a tiny run of the census demo",
                "settings": {key: getattr(args, key) for key in PRESSURE_SETTINGS},
                "servers": servers,
            }
            report["machine"]["load_average_1m_end"] = os.getloadavg()[0]
        else:
            report = load_test(run, "full" if args.slim else "model", args)
            if args.slim:
                report += load_test(args.slim, "slim", args)
    if args.output:
        args.output.write_text(json.dumps(report, indent=2, default=lambda v: None) + "\n")
    if args.json:
        print(json.dumps(report, indent=2, default=lambda v: None))
    elif args.pressure:
        print_pressure(report)
    else:
        print_table(report, args)


if __name__ == "__main__":
    main()
