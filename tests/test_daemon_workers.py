"""Worker processes beside the primary: hits without the primary, forwarding, tokens, restarts.

A request that reaches the daemon while the primary is SIGSTOPped can only have been accepted
by a worker (a stopped process accepts nothing); that is how these tests know which process
served what, without any timing (tests/support/workers.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Cli
from tests.support.daemons import Daemon, free_port, http, run_job, wait_for
from tests.support.env import BASE_ENV, REPO
from tests.support.origin import FakeOrigin
from tests.support.workers import (
    Background,
    alive,
    call_stopped,
    forwarded_so_far,
    listening_inode,
    primary_stopped,
    run_dir,
    sockets_of,
    start,
    status,
    workers_of,
)

TFHUB = "https://tfhub.dev/google/mymul/1"
TOKEN = "worker-token-1"


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        # Workers first, their pids read from the live primary just now (a pid read from a dead
        # daemon may be someone else's by now); they would leave by themselves anyway.
        for pid in workers_of(d):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        d.stop(signal.SIGKILL)


def test_workers_answer_hits_and_mirror_downloads_without_the_primary(
        cli: Cli, origin: FakeOrigin, home: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, 3, listen=True)
    workers = status(d)["workers"]
    assert len(workers) == 2 and d.proc.pid not in workers
    code, first = d.call("POST", "/v1/resolve", {"handle": TFHUB})
    assert code == 200 and first["fetched"] is True
    code, tar_from_primary = http("GET", f"{d.base}/google/mymul/1?tf-hub-format=compressed")
    assert code == 200
    hits_before = status(d)["hits"]
    with primary_stopped(d):
        answered = set()
        for handle in (TFHUB, TFHUB + "/") * 5:  # a fresh connection each time
            code, doc = call_stopped(d, "POST", "/v1/resolve", {"handle": handle})
            assert code == 200 and doc["fetched"] is False and doc["path"] == first["path"], doc
            answered.add(call_stopped(d, "GET", "/v1/health")[1]["pid"])
        code, tar_from_worker = http("GET", f"{d.base}/google/mymul/1?tf-hub-format=compressed")
    assert answered <= set(workers)
    assert code == 200 and tar_from_worker == tar_from_primary
    doc = status(d)
    assert doc["hits"] >= hits_before + 10 and doc["worker_requests"] >= 21
    code, raw = http("GET", f"{d.base}/metrics")
    assert "cachemgr_processes 3" in raw.decode()
    assert origin.completed("gcs") == 1


def test_misses_through_workers_are_fetched_once_by_the_primary(
        cli: Cli, origin: FakeOrigin, home: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, 3)
    bg = Background()
    with primary_stopped(d):
        for i in range(6):
            bg.run(d.call, "POST", "/v1/resolve", {"handle": TFHUB + ("/" if i % 2 else "")})
        # Six requests, accepted by workers (the primary is stopped) and forwarded to it.
        assert wait_for(lambda: forwarded_so_far(d) >= 6, 30)
    results = bg.join()
    assert all(code == 200 for code, _doc in results), results
    assert sum(doc["fetched"] for _code, doc in results) >= 1
    assert origin.started("gcs") == 1, "single flight broke across processes"
    doc = status(d)
    assert doc["forwarded"] >= 6 and doc["misses"] == 6 and doc["fetches"] == 1


def test_token_rule_holds_for_requests_a_worker_forwards(cli: Cli, origin: FakeOrigin, home: Path,
                                                         daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, 2, env={"CACHEMGR_TOKEN": TOKEN}, listen=True)
    body = json.dumps({"handles": [TFHUB]}).encode()
    forwarded = status(d)["forwarded"]
    bg = Background()
    with primary_stopped(d):
        bg.run(http, "POST", f"{d.base}/v1/pull", body)
        bg.run(http, "POST", f"{d.base}/v1/pull", body, {"X-Cachemgr-Via": "unix"})  # a spoofed hop header
        bg.run(http, "POST", f"{d.base}/v1/pull", body, {"Authorization": f"Bearer {TOKEN}"})
        assert wait_for(lambda: forwarded_so_far(d) >= forwarded + 3, 30)
    codes = sorted(code for code, _raw in bg.join())
    assert codes == [200, 401, 401], codes
    assert status(d)["forwarded"] >= forwarded + 3
    assert origin.started("gcs") == 1


def test_a_crashed_worker_is_replaced(cli: Cli, origin: FakeOrigin, home: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, 2)
    assert d.call("POST", "/v1/resolve", {"handle": TFHUB})[0] == 200
    (old,) = status(d)["workers"]
    with primary_stopped(d):
        assert call_stopped(d, "POST", "/v1/resolve", {"handle": TFHUB})[0] == 200
    hits = status(d)["hits"]
    os.kill(old, signal.SIGKILL)
    # One status read per check: two reads could see [old], then [] (the primary noticed the
    # exit between them), and pass before the replacement (started after a 1 s backoff) exists.
    assert wait_for(lambda: len(workers := status(d)["workers"]) == 1 and workers != [old], 30), d.output()
    assert "exited" in d.output()
    with primary_stopped(d):
        assert call_stopped(d, "POST", "/v1/resolve", {"handle": TFHUB})[0] == 200  # the new worker serves
    assert status(d)["hits"] == hits + 1  # counters carry on across the replacement


def test_a_worker_that_fails_to_start_is_tried_again(cli: Cli, home: Path, tmp_path: Path,
                                                    daemons: list[Daemon]) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    # A real failing start: while the flag file exists, a worker process exits at interpreter start.
    (hook / "sitecustomize.py").write_text(
        "import os, sys\n"
        "flag = os.environ.get('FAIL_WORKER_FLAG')\n"
        "if flag and 'cachemgrd.worker' in sys.orig_argv and os.path.exists(flag):\n"
        "    sys.exit(3)\n")
    flag = tmp_path / "fail-workers"
    flag.touch()
    d = start(daemons, cli, home, 2, env={"PYTHONPATH": f"{hook}:{REPO}", "FAIL_WORKER_FLAG": str(flag)})
    assert status(d)["workers"] == [] and "did not start" in d.output()
    flag.unlink()
    assert wait_for(lambda: len(status(d)["workers"]) == 1, 30), d.output()
    (worker,) = status(d)["workers"]
    with primary_stopped(d):
        assert call_stopped(d, "GET", "/v1/health")[1]["pid"] == worker


def test_sigterm_stops_every_process_and_leaves_nothing(cli: Cli, origin: FakeOrigin, home: Path,
                                                       daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, 3)
    workers = status(d)["workers"]
    run = run_dir(home)
    assert any(run.iterdir()), "the private runtime directory is not where TMPDIR says"
    assert d.stop(signal.SIGTERM) == 0, d.output()
    assert wait_for(lambda: not any(alive(p) for p in workers), 10)
    assert list(run.iterdir()) == [] and not d.sock.exists()


def test_workers_exit_when_the_primary_is_killed(cli: Cli, home: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, 3)
    workers = status(d)["workers"]
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait()
    assert wait_for(lambda: not any(alive(p) for p in workers), 20), "orphaned workers kept running"


def test_sighup_replaces_workers_with_the_new_settings(cli: Cli, origin: FakeOrigin, home: Path, tmp_path: Path,
                                                       daemons: list[Daemon]) -> None:
    cfg = tmp_path / "cfg.toml"
    port = free_port()
    cfg.write_text(f'token = "{TOKEN}"\nlisten = "127.0.0.1:{port}"\n')
    d = start(daemons, cli, home, 2, "--config", str(cfg))
    base = f"http://127.0.0.1:{port}"
    assert d.call("POST", "/v1/resolve", {"handle": TFHUB})[0] == 200  # a hit from now on
    old = status(d)["workers"]
    body = json.dumps({"handle": TFHUB}).encode()
    cfg.write_text(f'token = "new-{TOKEN}"\nlisten = "127.0.0.1:{free_port()}"\n')
    os.kill(d.proc.pid, signal.SIGHUP)
    assert wait_for(lambda: status(d)["workers"] not in ([], old), 30), d.output()
    assert wait_for(lambda: not any(alive(p) for p in old), 30)
    assert "listen changed; restart the daemon" in d.output()  # and the old port keeps serving
    with primary_stopped(d):  # the worker answers the hit, and checks the token itself
        assert http("POST", f"{base}/v1/resolve", body, {"Authorization": f"Bearer {TOKEN}"})[0] == 401
        code, raw = http("POST", f"{base}/v1/resolve", body, {"Authorization": f"Bearer new-{TOKEN}"})
    assert code == 200 and json.loads(raw)["fetched"] is False


def test_a_reload_lets_old_workers_finish_long_forwarded_requests(cli: Cli, origin: FakeOrigin, home: Path,
                                                                 daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, 2)
    (old,) = status(d)["workers"]
    release = origin.hold("gcs", after_bytes=100)
    bg = Background()
    # The status call above may have been forwarded too (a worker accepts about half the calls):
    # wait for this request's own forward, else the primary resumes in time to take it itself.
    forwarded = forwarded_so_far(d)
    with primary_stopped(d):  # so that the old worker takes the request and forwards it
        bg.run(d.call, "POST", "/v1/resolve", {"handle": TFHUB})
        assert wait_for(lambda: forwarded_so_far(d) > forwarded, 30)
    assert wait_for(lambda: origin.started("gcs") == 1, 60)
    os.kill(d.proc.pid, signal.SIGHUP)
    assert wait_for(lambda: status(d)["workers"] not in ([], [old]), 30), d.output()
    time.sleep(5)  # longer than the grace aiohttp gave the draining worker before (2 s to wait, 2 to cancel)
    assert alive(old), "the old worker gave up a request it was relaying"
    release.set()
    ((code, doc),) = bg.join()
    assert code == 200 and doc["fetched"] is True, doc
    assert wait_for(lambda: not alive(old), 30), "the old worker did not leave once it was done"


def test_a_stopping_worker_answers_a_connection_it_accepted_before_the_request_came(
        cli: Cli, home: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, 2)
    (worker,) = status(d)["workers"]
    listener = listening_inode(d.sock)
    with primary_stopped(d), socket.socket(socket.AF_UNIX) as conn:  # only the worker accepts
        before = sockets_of(worker)
        conn.settimeout(30)
        conn.connect(str(d.sock))
        assert wait_for(lambda: bool(sockets_of(worker) - before), 10), "the worker did not accept"
        os.kill(worker, signal.SIGTERM)  # what a reload does; the client has not sent its request yet
        assert wait_for(lambda: listener not in sockets_of(worker), 10), "the worker kept accepting"
        conn.sendall(b"GET /v1/health HTTP/1.1\r\nHost: cachemgr\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), reply
    assert json.loads(body)["pid"] == worker
    assert wait_for(lambda: not alive(worker), 30), "the worker did not leave once it had answered"


def test_two_quick_reloads_leave_one_set_of_workers(cli: Cli, home: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, 3)
    first = set(status(d)["workers"])
    os.kill(d.proc.pid, signal.SIGHUP)
    # The second SIGHUP lands while the first reload is still starting its workers (a signal sent
    # before the first was handled would merge with it).
    assert wait_for(lambda: "configuration reloaded" in d.output(), 30), d.output()
    os.kill(d.proc.pid, signal.SIGHUP)
    assert wait_for(lambda: d.output().count("workers reloaded") == 2, 60), d.output()
    workers = set(status(d)["workers"])
    assert len(workers) == 2 and not workers & first
    assert wait_for(lambda: set(workers_of(d)) == workers, 30), (workers_of(d), workers)


def test_a_tmpdir_too_deep_for_a_unix_socket_still_gives_working_workers(
        cli: Cli, origin: FakeOrigin, home: Path, daemons: list[Daemon]) -> None:
    deep = home.parent / ("d" * 60) / ("e" * 60)  # the private socket path would pass sun_path's 108 bytes
    deep.mkdir(parents=True)
    d = start(daemons, cli, home, 2, env={"TMPDIR": str(deep)})
    assert d.call("POST", "/v1/resolve", {"handle": TFHUB})[0] == 200
    with primary_stopped(d):
        assert call_stopped(d, "POST", "/v1/resolve", {"handle": TFHUB})[0] == 200  # a worker answered
    assert list(deep.iterdir()) == [], "the private directory went under the too-deep TMPDIR"


def test_a_socket_path_too_long_is_one_clear_error(cli: Cli, home: Path, tmp_path: Path) -> None:
    sock = tmp_path / ("s" * 120) / "d.sock"
    r = cli("daemon", "--socket", str(sock))
    lines = r.err.strip().splitlines()
    assert r.code == 3 and "longer than a Unix socket path may be" in lines[-1] and "--socket" in lines[-1], r.err


def test_one_process_when_asked(cli: Cli, home: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, 1)
    assert status(d)["workers"] == [] and workers_of(d) == []


def test_worker_is_started_only_by_the_daemon() -> None:
    proc = subprocess.run([sys.executable, "-m", "cachemgrd.worker"], stdin=subprocess.DEVNULL, env=BASE_ENV,
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "started by `cachemgr daemon`" in proc.stderr


def test_status_shows_workers(cli: Cli, home: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, cli, home, 3)
    r = cli("status", env={"CACHEMGR_SOCKET": str(d.sock)})
    assert r.code == 0 and "+2 workers" in r.out, r.out + r.err


def test_forwarder_answers_503_when_the_primary_is_gone(tmp_path: Path) -> None:
    import asyncio

    import aiohttp
    from aiohttp import web
    from cachemgrd.forward import Forwarder

    async def scenario() -> tuple[int, dict[str, Any]]:
        forwarder = Forwarder(str(tmp_path / "no-primary.sock"))
        await forwarder.start()
        app = web.Application()

        async def handler(request: web.Request) -> web.StreamResponse:
            return await forwarder(request)

        app.router.add_route("*", "/{path:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session, \
                    session.post(f"http://127.0.0.1:{port}/v1/pull", json={"handles": []}) as resp:
                return resp.status, await resp.json()
        finally:
            await runner.cleanup()
            await forwarder.close()

    code, doc = asyncio.run(scenario())
    assert code == 503 and doc["error"]["type"] == "primary_unavailable"
    assert "restart" in doc["error"]["message"]


def test_shim_falls_back_when_a_worker_says_the_primary_is_gone(origin: FakeOrigin, tmp_path: Path) -> None:
    import http.server
    import socketserver

    class Answer503(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"error": {"type": "primary_unavailable", "message": "primary is gone"}}).encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def get_request(self) -> tuple[Any, Any]:
            conn, _ = super().get_request()
            return conn, ("local", 0)  # http.server wants a (host, port) client address

    sock = tmp_path / "worker-only.sock"
    server = UnixHTTPServer(str(sock), Answer503)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = origin.hosting_url("google", "mymul", 1)
        out, _ = run_job("fallback", url, env={"CACHEMGR_SOCKET": str(sock), "TFHUB_CACHE_DIR": str(tmp_path / "hub")})
    finally:
        server.shutdown()
        server.server_close()
    assert out["call"] == [6.0] and out["path"].startswith(str(tmp_path / "hub"))
    assert len(out["warnings"]) == 1 and "primary is gone" in out["warnings"][0]
