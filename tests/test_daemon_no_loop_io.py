"""The daemon's event loop makes no filesystem call: a hung store leaves health and hits served.

The store sits on a real blocking filesystem: an ext4 image on a loop device, frozen with
``fsfreeze -f`` (tests/support/frozen.py). While it is frozen, every write to it blocks in the kernel (uninterruptible,
like a FUSE ``rename`` GlusterFS never answers), and reads still succeed. A miss then blocks
in its first write; the daemon must go on answering ``/v1/health``, ``/v1/status`` and hits of
a cached model, and report the stuck call once it has run past ``stuck_io_after``. Thawed, the
miss completes. A second test checks the source: no coroutine of the daemon calls the
filesystem itself.
"""

from __future__ import annotations

import ast
import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cachemgr.client.daemon_client import call
from cachemgr.store.aio import StoreIO
from tests.support.cli import Cli
from tests.support.daemons import Daemon, free_port, http
from tests.support.env import REPO
from tests.support.frozen import FrozenFs, frozen_filesystem, until, until_async

CACHED = "https://tfhub.dev/google/mymul/1"
MISS = "https://tfhub.dev/google/text-embed/1"


@pytest.fixture
def frozen_fs(tmp_path: Path) -> Iterator[FrozenFs]:
    with frozen_filesystem(tmp_path) as fs:
        yield fs


def _latencies(sock: str, status: str = "ok") -> list[float]:
    """20 health calls' times, sorted (each must answer ``status``)."""
    out = []
    for _ in range(20):
        started = time.perf_counter()
        code, health = call(sock, "GET", "/v1/health", timeout=30)
        out.append(time.perf_counter() - started)
        assert code == 200 and health["status"] == status, health
    return sorted(out)


def test_a_frozen_store_blocks_a_miss_but_not_health_status_or_hits(cli: Cli, frozen_fs: FrozenFs,
                                                                      tmp_path: Path) -> None:
    home = frozen_fs.mnt / "store"
    assert cli("pull", CACHED, env={"CACHEMGR_HOME": str(home)}).code == 0
    run = tmp_path / "run"  # socket, ready file and log: on a disk that stays writable
    run.mkdir()
    env = {**cli.env, "CACHEMGR_STUCK_IO_AFTER": "1s", "CACHEMGR_WORKERS": "1"}
    d = Daemon(home, env, rundir=run, listen=f"127.0.0.1:{free_port()}")
    sock = str(d.sock)
    miss: dict[str, Any] = {}
    asker = threading.Thread(target=lambda: miss.update(answer=call(sock, "POST", "/v1/resolve",
                                                                      {"handle": MISS}, timeout=600)))
    try:
        d.wait_ready()
        code, hit = call(sock, "POST", "/v1/resolve", {"handle": CACHED}, timeout=30)
        assert code == 200 and not hit["fetched"]
        assert call(sock, "GET", "/v1/health", timeout=30)[1]["status"] == "ok"
        before = _latencies(sock)

        frozen_fs.freeze()
        asker.start()  # its first write (the in-flight mark) blocks in a store thread

        def stuck_on_the_miss() -> list[dict[str, Any]]:
            code, doc = call(sock, "GET", "/v1/health", timeout=30)  # a blocked loop fails this
            assert code == 200, doc
            return [c for c in doc.get("stuck_io", []) if MISS in c["what"]]

        (stuck, *_) = until("health to report the miss's stuck store call", stuck_on_the_miss)
        assert stuck["seconds"] >= 1 and stuck["thread"].startswith("storeio"), stuck
        during = _latencies(sock, "degraded")
        # A hit of the cached model is still answered (reads do not block on a frozen ext4),
        # and so are its manifest and its mirror tar.
        code, again = call(sock, "POST", "/v1/resolve", {"handle": CACHED}, timeout=30)
        assert code == 200 and again["path"] == hit["path"], again
        code, body = http("GET", f"{d.base}/v1/manifests/{hit['manifest']}")
        assert code == 200 and json.loads(body)
        code, body = http("GET", f"{d.base}/google/mymul/1?tf-hub-format=compressed")
        assert code == 200 and b"saved_model.pb" in body
        code, status = call(sock, "GET", "/v1/status", timeout=30)
        assert code == 200 and any(MISS in c["what"] for c in status["stuck_io"]), status
        assert status["inflight"], status  # the miss, waiting on its store call
        shown = cli("status", env={"CACHEMGR_SOCKET": sock, "CACHEMGR_HOME": str(tmp_path / "elsewhere")})
        assert shown.code == 0 and "STUCK store call" in shown.out and MISS in shown.out, shown
        assert asker.is_alive() and not miss, "the miss finished while the store was frozen"
        print(f"\n/v1/health over 20 calls, median/max: {before[10] * 1000:.1f}/{before[-1] * 1000:.1f} ms before, "
              f"{during[10] * 1000:.1f}/{during[-1] * 1000:.1f} ms with the store frozen")  # figures, not asserted

        frozen_fs.thaw()
        asker.join(300)
        code, doc = miss["answer"]
        assert code == 200 and doc["fetched"], doc
        until("health to be ok again",
               lambda: call(sock, "GET", "/v1/health", timeout=30)[1]["status"] == "ok")
    finally:
        frozen_fs.thaw()
        d.stop()
        if asker.is_alive():
            asker.join(60)


# -- StoreIO itself (in-process: plain threads, no store) ---------------------------------------------

def test_store_io_reports_a_stuck_call_and_serves_others_meanwhile() -> None:
    async def main() -> None:
        io = StoreIO(stuck_after=0.1, threads=3)
        hung = threading.Event()
        blocked = [asyncio.ensure_future(io.run(hung.wait, what=f"rename {i}")) for i in range(2)]
        stuck = await until_async(lambda: len(io.stuck()) == 2 and io.stuck())
        assert [c["what"] for c in stuck] == ["rename 0", "rename 1"] and all(c["seconds"] >= 0.1 for c in stuck)
        assert all(c["thread"].startswith("storeio-") for c in stuck)
        assert await io.run(sum, [1, 2], what="quick") == 3  # a free thread: it never waits behind the stuck two
        third = asyncio.ensure_future(io.run(hung.wait, what="rename 2"))
        queued = asyncio.ensure_future(io.run(sum, [4], what="queued"))  # all three threads hang now
        assert await until_async(lambda: io.queued == 1) and not queued.done()
        hung.set()
        assert await queued == 4 and await asyncio.gather(*blocked, third) == [True, True, True]
        assert io.stuck() == [] and io.queued == 0
        with pytest.raises(ValueError):
            await io.run(int, "not a number", what="parse")  # the call's own error reaches the caller
        once = threading.Event()
        first = io.later("use x", once.wait, what="record use")
        assert first is not None and io.later("use x", once.wait, what="record use") is None  # one pending per key
        once.set()
        await asyncio.wrap_future(first)
        io.close()

    asyncio.run(main())



# -- the source: no coroutine calls the filesystem itself ------------------------------------------

DAEMON = REPO / "daemon" / "cachemgrd"
# Calls that touch the filesystem: os functions, Path methods, and the store's own.
OS_FS = {"stat", "lstat", "open", "read", "write", "close", "rename", "replace", "link", "symlink", "unlink",
         "remove", "mkdir", "makedirs", "listdir", "scandir", "walk", "fsync", "chmod", "utime", "readlink",
         "rmdir", "fstat", "pread", "fdopen", "truncate", "chown"}
OS_PATH_FS = {"exists", "lexists", "isdir", "isfile", "islink", "getsize", "getmtime", "realpath"}
PATH_FS = {"exists", "is_dir", "is_file", "is_symlink", "stat", "lstat", "read_text", "read_bytes",
           "write_text", "write_bytes", "mkdir", "unlink", "rename", "replace", "iterdir", "touch", "chmod",
           "readlink", "symlink_to", "rmdir", "glob", "rglob", "open"}
STORE_FS = {"lookup", "read", "write", "read_manifest", "write_manifest", "has_blob", "adopt_blob", "materialize",
            "new_temp", "all", "require", "iter_blobs"}
LIBRARY_FS = {"record_handle_use", "record_use", "relink", "record_model", "remove_quietly", "open_no_follow",
              "atomic_write", "atomic_symlink", "store_totals", "open_store", "ingest_directory", "ingest_stream",
              "open"}
# Sync functions the loop runs directly (callbacks), checked like coroutines.
LOOP_CALLBACKS = {("watch.py", "_event"), ("watch.py", "start")}
# Start-up, in the daemon's runtime directory (not the store), before it says it is ready.
ALLOWED = {("main.py", "os.chmod"), ("main.py", "ready_file.write_text")}


def _fs_calls(body: list[ast.stmt]) -> list[tuple[int, str]]:
    """The filesystem calls written directly in ``body`` (not inside nested functions or lambdas)."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.Call):
            f = node.func
            text = ast.unparse(f)
            if isinstance(f, ast.Name) and f.id in LIBRARY_FS:
                found.append((node.lineno, text))
            elif isinstance(f, ast.Attribute):
                owner = ast.unparse(f.value)
                if owner == "os" and f.attr in OS_FS or owner == "os.path" and f.attr in OS_PATH_FS:
                    found.append((node.lineno, text))
                elif owner not in ("os", "os.path", "self.io", "state.io", "self.state.io", "io", "resp",
                                   "request", "session", "asyncio", "loop", "json", "log", "doc", "headers",
                                   "self.observer", "self.inflight", "self._pending", "self._prefetched",
                                   "self.background", "self._recent") and (
                        f.attr in PATH_FS or f.attr in STORE_FS and ("index" in owner or "store" in owner)):
                    found.append((node.lineno, text))
        for child in ast.iter_child_nodes(node):
            visit(child)

    for stmt in body:
        visit(stmt)
    return found


def test_no_coroutine_of_the_daemon_calls_the_filesystem() -> None:
    offenders = []
    for path in sorted(DAEMON.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            loop_side = isinstance(node, ast.AsyncFunctionDef) or (
                isinstance(node, ast.FunctionDef) and (path.name, node.name) in LOOP_CALLBACKS)
            if loop_side:
                assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                offenders += [f"{path.name}:{line} {node.name}: {text}" for line, text in _fs_calls(node.body)
                              if (path.name, text) not in ALLOWED]
    assert not offenders, "filesystem calls on the event loop (use state.io.run):\n" + "\n".join(offenders)


def test_the_lint_sees_a_filesystem_call_in_a_coroutine() -> None:
    tree = ast.parse("async def f(state, p):\n    state.store.read_manifest(p)\n    p.exists()\n"
                     "    os.stat(p)\n    await state.io.run(os.stat, p, what='x')\n")
    fn = tree.body[0]
    assert isinstance(fn, ast.AsyncFunctionDef)
    assert [t for _, t in _fs_calls(fn.body)] == ["state.store.read_manifest", "p.exists", "os.stat"]
