"""The models the benchmarks use and the server that serves them.

- the big model: ``ensure_archive`` builds (once, cached under ``--workdir``) a real SavedModel
  of about ``--size-mb`` MiB and its TF Hub ``.tar.gz``; ``Server`` serves a directory from a
  separate process on 127.0.0.1 (``sendfile``);
- tiny models: ``ensure_small_models`` (``MyMulModel``, y = init * x), also cached;
- ``tree_listing`` / ``compare_trees`` check what a pull unpacked.

The builder and the server are this package's own children (``CHILDREN``):

    python -m benchmarks.harness --child build DEST SIZE_BYTES
    python -m benchmarks.harness --child serve ROOT      # prints the port, then serves
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .children import REPO_ROOT, ChildError, log, run_child
from .measure import proc_cpu_seconds

MIB = 1024 * 1024
URL_PATH = "bench/big/1"


# ---------------------------------------------------------------------------------------
# Children of the harness
# ---------------------------------------------------------------------------------------
def child_build(dest: str, size_bytes: str) -> None:
    """Build the big SavedModel and its TF Hub ``.tar.gz`` at ``dest`` (atomically)."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.support.models import build_big_model, make_archive

    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-model-", dir=target.parent) as tmp:
        model_dir = build_big_model(Path(tmp) / "model", int(size_bytes))
        partial = Path(tmp) / "archive.tar.gz"
        make_archive(model_dir, partial, "gz")
        os.replace(partial, target)


def child_serve(root: str) -> None:
    """Serve ``root`` on 127.0.0.1 (random port, printed first) with ``sendfile``."""
    import functools
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        def copyfile(self, source: Any, outputfile: Any) -> None:
            self.connection.sendfile(source)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Handler, directory=root)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


CHILDREN: dict[str, Callable[..., object]] = {"build": child_build, "serve": child_serve}


def harness_cmd(kind: str, *args: str) -> list[str]:
    """A child of the harness (``build`` or ``serve``); run it with ``cwd=REPO_ROOT``."""
    return [sys.executable, "-m", "benchmarks.harness", "--child", kind, *args]


# ---------------------------------------------------------------------------------------
# The parent's side
# ---------------------------------------------------------------------------------------
def ensure_archive(workdir: Path, size_mb: int, rebuild: bool, env: dict[str, str]) -> tuple[Path, Path]:
    """The served root and the archive inside it (``ROOT/bench/big/1``), built if missing.

    The archive is then read once, so that every run downloads it from the page cache.
    """
    root = workdir / f"www-{size_mb}mb"
    archive = root / URL_PATH
    if rebuild and archive.exists():
        archive.unlink()
    if not archive.is_file():
        log(f"building a {size_mb} MiB SavedModel and its .tar.gz (once; cached at {archive})")
        start = time.perf_counter()
        run_child(harness_cmd("build", str(archive), str(size_mb * MIB)), env, timed=False)
        log(f"built in {time.perf_counter() - start:.1f}s")
    with archive.open("rb") as fh:
        while fh.read(8 * MIB):
            pass
    return root, archive


def ensure_small_models(workdir: Path, inits: list[float], env: dict[str, str]) -> list[tuple[Path, Path]]:
    """Tiny ``MyMulModel`` SavedModels (y = init * x) and their TF Hub ``.tar.gz``, built once.

    Returns ``(saved_model_dir, archive)`` per init value; cached under ``WORKDIR/small``.
    """
    root = workdir / "small"
    out = [(root / f"mymul-{init:g}", root / f"mymul-{init:g}.tar.gz") for init in inits]
    missing = [(init, d, a) for init, (d, a) in zip(inits, out, strict=True) if not a.is_file()]
    if missing:
        log(f"building {len(missing)} tiny SavedModel(s) (once; cached under {root})")
        code = (
            "import shutil, sys\n"
            "from pathlib import Path\n"
            f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
            "from tests.support.models import build_mymul, make_archive\n"
            "args = sys.argv[1:]\n"
            "for init, d, a in zip(args[0::3], args[1::3], args[2::3]):\n"
            "    shutil.rmtree(d, ignore_errors=True)\n"
            "    build_mymul(Path(d), float(init))\n"
            "    make_archive(Path(d), Path(a + '.part'), 'gz')\n"
            "    Path(a + '.part').rename(a)\n"
        )
        args = [str(x) for init, d, a in missing for x in (init, d, a)]
        root.mkdir(parents=True, exist_ok=True)
        run_child([sys.executable, "-c", code, *args], env, timed=False)
    return out


class Server:
    """An archive server, a separate process on 127.0.0.1 that prints its port first.

    ``cmd`` is the server's command line (default: the harness's ``serve`` child on ``root``).
    """

    def __init__(self, root: Path, env: dict[str, str], cmd: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(cmd or harness_cmd("serve", str(root)), stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, cwd=REPO_ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.isdigit():
            self.stop()
            raise ChildError(f"archive server did not start (said {line!r})")
        self.port = int(line)

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far."""
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def tree_listing(root: Path) -> dict[str, int]:
    """Relative path -> size of every regular file below ``root``."""
    out: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = Path(dirpath) / name
            out[full.relative_to(root).as_posix()] = full.stat().st_size
    return out


def compare_trees(snapshot: Path, hub_dir: Path) -> list[str]:
    """Differences between the cachemgr snapshot and hub's extracted directory."""
    ours, theirs = tree_listing(snapshot), tree_listing(hub_dir)
    problems = [f"only in cachemgr: {p}" for p in sorted(ours.keys() - theirs.keys())]
    problems += [f"only in hub: {p}" for p in sorted(theirs.keys() - ours.keys())]
    problems += [
        f"size differs: {p} ({ours[p]} vs {theirs[p]})"
        for p in sorted(ours.keys() & theirs.keys()) if ours[p] != theirs[p]
    ]
    if not ours:
        problems.append("cachemgr snapshot is empty")
    return problems
