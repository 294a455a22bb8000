"""Clients that put a server under pressure, for ``serve_load.py --pressure``.

* :func:`open_loop`: requests sent at a fixed rate whatever the answers (an open loop, as real
  traffic is), so that offering twice what the server can do shows what it does with the
  excess: how many it accepts per second, how fast it refuses the rest, and how long the
  accepted ones wait.
* :func:`concurrent_bodies`: many large bodies sent at once, each streamed in 1 MiB pieces
  from ONE shared buffer (the client's own memory stays flat); the caller reads the server
  process's peak resident memory meanwhile.

Loopback only, every loop bounded by time and count. HTTP/1.1 spoken by hand over asyncio
streams, as the steady-load client does (a general client costs more than the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 1024 * 1024
ANSWER_TIMEOUT_S = 120.0


async def _open(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    import socket

    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


def _head(host: str, port: int, length: int) -> bytes:
    return (
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def _read_answer(reader: asyncio.StreamReader) -> int:
    """Read one HTTP answer; return its status."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed before an answer")
    status = int(status_line.split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def _percentiles(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.array(seconds) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


async def open_loop(
    host: str, port: int, body: bytes, rate: float, seconds: float, max_in_flight: int
) -> dict[str, Any]:
    """Send ``body`` ``rate`` times per second for ``seconds``; at most ``max_in_flight``
    requests outstanding (a request that finds none free is counted as not sent)."""
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    outcomes: dict[str, list[float]] = {"accepted": [], "refused": [], "other": []}
    in_flight = 0
    not_sent = 0
    message = _head(host, port, len(body)) + body

    async def one() -> None:
        nonlocal in_flight
        connection = idle.pop() if idle else await _open(host, port)
        start = time.perf_counter()
        try:
            connection[1].write(message)
            status = await asyncio.wait_for(_read_answer(connection[0]), ANSWER_TIMEOUT_S)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, TimeoutError):
            outcomes["other"].append(time.perf_counter() - start)
            connection[1].close()
        else:
            kind = {200: "accepted", 503: "refused"}.get(status, "other")
            outcomes[kind].append(time.perf_counter() - start)
            idle.append(connection)
        finally:
            in_flight -= 1

    total = int(rate * seconds)
    tasks = []
    start = time.perf_counter()
    for k in range(total):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight >= max_in_flight:
            not_sent += 1
            continue
        in_flight += 1
        tasks.append(asyncio.create_task(one()))
    sent_for = time.perf_counter() - start
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for _, writer in idle:
        writer.close()
    return {
        "offered_per_s": rate,
        "seconds_sending": round(sent_for, 2),
        "seconds_until_last_answer": round(elapsed, 2),
        "sent": len(tasks),
        "not_sent_client_saturated": not_sent,
        "accepted": len(outcomes["accepted"]),
        "refused_503": len(outcomes["refused"]),
        "other": len(outcomes["other"]),
        "accepted_per_s": len(outcomes["accepted"]) / elapsed,
        "refused_per_s": len(outcomes["refused"]) / elapsed,
        "accepted_latency": _percentiles(outcomes["accepted"]),
        "refused_latency": _percentiles(outcomes["refused"]),
    }


async def _send_large(host: str, port: int, body: bytes) -> tuple[int | None, float]:
    """Stream ``body`` in pieces while listening for an early answer; (status, seconds)."""
    start = time.perf_counter()
    reader, writer = await _open(host, port)
    view = memoryview(body)

    async def send() -> None:
        writer.write(_head(host, port, len(body)))
        for offset in range(0, len(view), CHUNK):
            writer.write(view[offset : offset + CHUNK])
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        status: int | None = await asyncio.wait_for(_read_answer(reader), ANSWER_TIMEOUT_S)
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, TimeoutError):
        status = None
    sender.cancel()
    with contextlib.suppress(asyncio.CancelledError, OSError):
        await sender
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return status, time.perf_counter() - start


async def concurrent_bodies(host: str, port: int, body: bytes, count: int) -> dict[str, Any]:
    """Send ``count`` copies of ``body`` at once; the statuses and how long they took."""
    results = await asyncio.gather(*(_send_large(host, port, body) for _ in range(count)))
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "bodies": count,
        "body_bytes": len(body),
        "statuses": statuses,
        "seconds_max": max(seconds for _, seconds in results),
    }


def rss_bytes(pid: int) -> dict[str, int]:
    """Current and peak resident memory of a process (Linux /proc)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return {"rss": fields["VmRSS"], "peak_rss": fields["VmHWM"]}


def reset_peak(pid: int) -> None:
    """Make the peak resident memory start again from the current one (Linux 4.0+)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def large_body(column: str, rows: int, size: int) -> bytes:
    """A ``{"rows": [...]}`` body of exactly ``size`` bytes: ``rows`` rows, each with one long
    text value in ``column`` (a category the run has never seen)."""
    skeleton = '{"rows": [' + ",".join([f'{{"{column}": ""}}'] * rows) + "]}"
    fill, extra = divmod(size - len(skeleton), rows)
    if fill < 0:
        raise ValueError("the body is too small for that many rows")
    values = ["y" * (fill + (1 if i < extra else 0)) for i in range(rows)]
    text = '{"rows": [' + ",".join(f'{{"{column}": "{v}"}}' for v in values) + "]}"
    assert len(text) == size
    return text.encode()


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
