"""Proxy (HTTPS_PROXY via CONNECT), custom CA bundle over TLS, and a killed pull."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme
from aiohttp import web

from tests.support.cli import Cli
from tests.support.env import REPO
from tests.support.origin import FakeOrigin
from tests.support.suite import Archives

T = TypeVar("T")


class LoopThread:
    """Runs coroutines' servers on a private event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def start_connect_proxy(seen: list[str]) -> tuple[asyncio.AbstractServer, int]:
    """A minimal HTTP CONNECT proxy (what HTTPS_PROXY points at)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = request.split(b"\r\n", 1)[0].decode().split(" ", 2)
        seen.append(f"{method} {target}")
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def start_tls_origin(archive: bytes, ctx: ssl.SSLContext) -> tuple[web.AppRunner, int]:
    async def model(request: web.Request) -> web.Response:
        assert request.query.get("tf-hub-format") == "compressed"
        return web.Response(body=archive, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/google/mymul/1", model)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


def test_https_proxy_and_custom_ca_bundle(cli: Cli, archives: Archives, tmp_path: Path,
                                          loop_thread: LoopThread) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    runner, tls_port = loop_thread.run(start_tls_origin(archives.mymul, server_ctx))
    seen: list[str] = []
    proxy, proxy_port = loop_thread.run(start_connect_proxy(seen))
    url = f"https://127.0.0.1:{tls_port}/google/mymul/1"
    try:
        untrusted = cli("pull", url)
        assert untrusted.code == 7 and "cannot connect" in untrusted.err
        assert "certificate" in untrusted.err.lower() or "ssl" in untrusted.err.lower()

        env = {"HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}", "CACHEMGR_CA_BUNDLE": str(ca_file)}
        r = cli("pull", url, env=env)
        assert r.code == 0, r.err
        assert seen == [f"CONNECT 127.0.0.1:{tls_port}"]
    finally:
        loop_thread.run(runner.cleanup())
        proxy.close()


def test_killed_pull_leaves_no_ref_and_its_temp_is_cleaned(cli: Cli, origin: FakeOrigin,
                                                           home: Path) -> None:
    release = origin.hold("gcs", after_bytes=2000)
    env = {**cli.env, "CACHEMGR_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "cachemgr", "pull", "https://tfhub.dev/google/mymul/1"],
                            env=env, cwd=REPO)
    deadline = time.time() + 60
    while origin.started("gcs") < 1 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    release.set()
    assert os.listdir(home / "refs") == [] and os.listdir(home / "snapshots") == []
    # Only tensorflow_hub's locks of the killed fetch (host.pid.uuid, one per spelling of the
    # handle) are in the view: no entry.
    locks = os.listdir(home / "view")
    assert locks and all(n.endswith(".lock") for n in locks), locks
    assert {(home / "view" / n).read_text().split(".")[-2] for n in locks} == {str(proc.pid)}
    leftovers = os.listdir(home / "tmp")
    assert leftovers and all(f".{proc.pid}." in n for n in leftovers)

    r = cli("pull", "https://tfhub.dev/google/mymul/1")
    assert r.code == 0, r.err
    assert os.listdir(home / "tmp") == [], "the dead pull's temp was not collected"
    assert [n for n in os.listdir(home / "view") if n.endswith(".lock")] == [], "the dead pull's hub lock stayed"


def test_bad_config_is_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("mirrors = 3\n")
    r = cli("--config", str(cfg), "pull", "https://tfhub.dev/google/mymul/1")
    assert r.code == 3 and str(cfg) in r.err and "mirrors" in r.err
    cfg.write_text("max_model_size = 'lots'\n")
    r = cli("--config", str(cfg), "ls")
    assert r.code == 3 and "not a size" in r.err
    cfg.write_text("[broken\n")
    r = cli("--config", str(cfg), "ls")
    assert r.code == 3 and "invalid TOML" in r.err
    cfg.write_text("colour = 'blue'\n")
    r = cli("--config", str(cfg), "ls")
    assert r.code == 3 and "unknown key 'colour'" in r.err
    r = cli("ls", env={"CACHEMGR_MIRRORS": "https://tfhub.dev/"})
    assert r.code == 3 and "CACHEMGR_MIRRORS" in r.err and "PREFIX=BASE" in r.err
    r = cli("--config", str(tmp_path / "missing.toml"), "ls")
    assert r.code == 3 and "does not exist" in r.err


def test_config_file_mirrors(cli: Cli, origin: FakeOrigin, tmp_path: Path) -> None:
    cfg_dir = tmp_path / "xdg-config" / "cachemgr"
    cfg_dir.mkdir(parents=True)
    lines = ["[mirrors]"] + [f'"{k}" = "{v}"' for k, v in origin.mirror_map.items()]
    (cfg_dir / "config.toml").write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in cli.env.items() if k != "CACHEMGR_MIRRORS"}
    r = subprocess.run([sys.executable, "-m", "cachemgr", "pull", "https://tfhub.dev/google/mymul/1"],
                       env={**env, "CACHEMGR_HOME": str(cli.home)}, capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert origin.completed("gcs") == 1
