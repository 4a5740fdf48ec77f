"""The load generator of ``bench_resolve_latency.py``: a child process that runs the asyncio
clients against one daemon's Unix socket and prints one JSON line with what it measured.

    python benchmarks/latency_load.py CONFIG_JSON

``CONFIG_JSON`` is the dict that ``bench_resolve_latency.run_load`` builds and ``load_cmd`` puts on
that command line; ``_load`` describes the load it runs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__:  # imported as benchmarks.latency_load
    from benchmarks import harness
else:  # run as a script, or imported by one: benchmarks/ itself is first on sys.path
    import harness  # type: ignore[no-redef]

LOAD_TIMEOUT = 180.0  # a load child's whole run
FETCH_TIMEOUT = 150.0  # the big resolve of the fetch phase
FETCH_LEAD = 1.0  # seconds of hits before the fetch starts (the same daemon's figures without a fetch)
FETCHED_FALSE = (b'"fetched": false', b'"fetched":false')


def _request_bytes(endpoint: str, handle: str, keepalive: bool) -> bytes:
    conn = "keep-alive" if keepalive else "close"
    if endpoint == "health":
        return f"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: {conn}\r\n\r\n".encode()
    body = json.dumps({"handle": handle}).encode()
    head = (f"POST /v1/resolve HTTP/1.1\r\nHost: localhost\r\nConnection: {conn}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _read_response(reader: Any) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = (ln.partition(":") for ln in lines[1:])
    length = next(int(v) for k, _, v in fields if k.lower() == "content-length")
    return status, await reader.readexactly(length)


async def _load(cfg: dict[str, Any]) -> dict[str, Any]:
    """Closed loop (``rate`` 0: each client sends its next request when the last answered) or open
    loop (``rate`` requests/s over all clients, each on a fixed schedule; a request's latency counts
    from when it was due, so a daemon that falls behind is not hidden by the clients waiting).

    With ``fetch_handle``, one more connection resolves that (uncached) handle ``lead`` seconds
    after the clients start, and the clients stop once it answered (or after ``per_client``
    requests each). Then the main figures (latencies, CPU, seconds) cover only the requests sent
    while the fetch ran; those sent before it are ``before_latencies_ms``.
    """
    sock, endpoint, client = cfg["sock"], cfg["endpoint"], cfg["client"]
    concurrency, per_client, keepalive = int(cfg["concurrency"]), int(cfg["per_client"]), bool(cfg["keepalive"])
    handles: list[str] = cfg["handles"]
    rate = float(cfg["rate"])
    fetch_handle: str | None = cfg.get("fetch_handle")
    lead = float(cfg.get("lead", 0.0))
    daemon_pid = int(cfg["daemon_pid"])
    by_pid: dict[str, list[float]] = {}  # latencies by the pid that serves the connection ("0": unknown)
    before: list[float] = []  # with a fetch: the latencies of the requests sent before it started
    fetching = [not fetch_handle]
    conns_by_pid: dict[str, int] = {}
    statuses: dict[int, int] = {}
    bad_bodies = [0]
    checked: list[dict[str, Any]] = []
    start_event = asyncio.Event()
    stop = asyncio.Event()  # the fetch answered: the clients stop
    start_at = [0.0]
    ready_count = [0]
    fetch_doc: dict[str, Any] = {}
    interval = concurrency / rate if rate > 0 else 0.0

    def sample() -> tuple[float, float, dict[int, float], float]:
        """Now, this process's CPU, the daemon tree's (primary and workers) and the machine's busy time."""
        now, cpu = time.perf_counter(), harness.cpu_seconds()
        return now, cpu, harness.tree_cpu_seconds(daemon_pid), harness.host_busy_seconds()

    window: list[tuple[float, float, dict[int, float], float]] = []  # where the figures start

    def record(lat: list[float], status: int, body: bytes, seconds: float, check: bool, during: bool) -> None:
        (lat if during else before).append(seconds)
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200 and endpoint == "resolve" and not any(f in body for f in FETCHED_FALSE):
            bad_bodies[0] += 1
        if check:
            checked.append(json.loads(body))

    async def probe(reader: Any, writer: Any) -> str:
        """The pid of the process that serves this kept-alive connection (untimed)."""
        writer.write(_request_bytes("health", "", True))
        status, body = await asyncio.wait_for(_read_response(reader), 30)
        return str(json.loads(body).get("pid", 0)) if status == 200 else "0"

    async def raw_client(i: int) -> None:
        reqs = [_request_bytes(endpoint, h, keepalive) for h in handles]
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        pid = "0"
        for attempt in range(50):  # keep-alive: connect before the clock (retry while the backlog is full)
            if not keepalive:
                break
            try:
                reader, writer = await asyncio.open_unix_connection(sock)
                pid = await probe(reader, writer)
                break
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.01 * (attempt + 1))
        lat = by_pid.setdefault(pid, [])
        conns_by_pid[pid] = conns_by_pid.get(pid, 0) + 1
        ready_count[0] += 1
        await start_event.wait()
        for j in range(per_client):
            if stop.is_set():
                break
            if interval:
                due = start_at[0] + (i / concurrency + j) * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if stop.is_set():
                        break
                t0 = due
            else:
                t0 = time.perf_counter()
            during = fetching[0]
            try:
                if writer is None:
                    reader, writer = await asyncio.open_unix_connection(sock)
                assert reader is not None
                writer.write(reqs[(i + j) % len(reqs)])
                status, body = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError):
                # A full listen backlog: connect() fails with EAGAIN at once (asyncio then reports
                # ENOTCONN on the first send). Counted as status 0; the client opens a new connection.
                status, body = 0, b""
                if writer is not None:
                    writer.close()
                reader = writer = None
            seconds = time.perf_counter() - t0
            if not keepalive and writer is not None:
                writer.close()
                reader = writer = None
            record(lat, status, body, seconds, j == 0 and status == 200, during)
        if writer is not None:
            writer.close()

    async def aiohttp_client(i: int, session: Any) -> None:
        lat = by_pid.setdefault("0", [])
        await start_event.wait()
        for j in range(per_client):
            handle = handles[(i + j) % len(handles)]
            t0 = time.perf_counter()
            if endpoint == "health":
                async with session.get("http://localhost/v1/health") as resp:
                    body = await resp.read()
            else:
                async with session.post("http://localhost/v1/resolve", json={"handle": handle}) as resp:
                    body = await resp.read()
            record(lat, resp.status, body, time.perf_counter() - t0, j == 0, True)

    async def fetch(handle: str) -> None:
        """Resolve the uncached ``handle`` on a connection of its own, then stop the clients."""
        await start_event.wait()
        await asyncio.sleep(lead)
        window[:] = [sample()]
        fetching[0] = True
        t0 = time.perf_counter()
        writer = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock)
            writer.write(_request_bytes("resolve", handle, False))
            status, body = await asyncio.wait_for(_read_response(reader), FETCH_TIMEOUT)
            fetch_doc.update(status=status, body=json.loads(body) if body.startswith(b"{") else body.decode())
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            fetch_doc.update(status=0, error=repr(exc))
        finally:
            fetch_doc["seconds"] = time.perf_counter() - t0
            stop.set()
            if writer is not None:
                writer.close()

    session = None
    if client == "aiohttp":
        import aiohttp

        conn = aiohttp.UnixConnector(path=sock, limit=concurrency, force_close=not keepalive)
        session = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60))
        tasks = [asyncio.ensure_future(aiohttp_client(i, session)) for i in range(concurrency)]
    else:
        tasks = [asyncio.ensure_future(raw_client(i)) for i in range(concurrency)]
    for _ in range(1000):  # every task connected (and knows its server process) and waits on the event
        await asyncio.sleep(0.01)
        if ready_count[0] >= concurrency or client == "aiohttp":
            break
    if fetch_handle:
        tasks.append(asyncio.ensure_future(fetch(fetch_handle)))
    window[:] = [sample()]
    start_at[0] = window[0][0]
    start_event.set()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), LOAD_TIMEOUT)
    finally:
        if session is not None:
            await session.close()
    end, cpu_end, daemon_end, busy_end = sample()
    start, cpu_start, daemon_start, busy_start = window[0]
    seconds, cpu, busy = end - start, cpu_end - cpu_start, busy_end - busy_start
    primary_cpu = daemon_end.get(daemon_pid, 0.0) - daemon_start.get(daemon_pid, 0.0)
    workers_cpu = sum(v - daemon_start.get(p, 0.0) for p, v in daemon_end.items() if p != daemon_pid)
    bad = [d for d in checked if endpoint == "resolve" and (d.get("fetched") is not False or "path" not in d)]
    return {"latencies_by_pid": {p: [round(x * 1000, 4) for x in v] for p, v in by_pid.items()},
            "connections_by_pid": conns_by_pid, "seconds": seconds, "cpu_seconds": cpu,
            "daemon_cpu_seconds": primary_cpu + workers_cpu, "daemon_worker_cpu_seconds": workers_cpu,
            "host_busy_seconds": busy, "statuses": {str(k): v for k, v in statuses.items()},
            "bad_bodies": len(bad) + bad_bodies[0], "sample": checked[0] if checked else None,
            "fetch": fetch_doc or None, "before_latencies_ms": [round(x * 1000, 4) for x in before]}


def load_cmd(cfg: dict[str, Any]) -> list[str]:
    """The command line of a load child that runs ``cfg``."""
    return [sys.executable, str(Path(__file__).resolve()), json.dumps(cfg)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: latency_load.py CONFIG_JSON")
    harness.emit(asyncio.run(_load(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
