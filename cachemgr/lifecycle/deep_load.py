"""``verify --deep``: load each model with ``tf.saved_model.load`` in a child process.

One child loads the models one after another and prints a JSON line per model (so TensorFlow
is imported once). If the child dies (a crash inside TensorFlow), the model it was loading is
reported as failed and a new child continues with the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_LOADER = r"""
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tensorflow as tf
for path in sys.argv[1:]:
    print("BEGIN " + json.dumps(path), flush=True)
    try:
        obj = tf.saved_model.load(path)
        sigs = sorted(getattr(obj, "signatures", {}).keys())
        print("RESULT " + json.dumps({"path": path, "ok": True, "signatures": sigs}), flush=True)
    except Exception as exc:
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        print("RESULT " + json.dumps({"path": path, "ok": False, "error": msg}), flush=True)
"""


@dataclass(frozen=True)
class LoadResult:
    path: str
    ok: bool
    signatures: tuple[str, ...] = ()
    error: str = ""


def _is_tf1_module(path: Path) -> bool:
    return (path / "tfhub_module.pb").exists() and not (path / "saved_model.pb").exists()


def _run_loader(todo: list[str], env: dict[str, str], timeout: float,
                on_line: Callable[[str], None]) -> tuple[int, str]:
    """Run the loader on ``todo``, handing each stdout line to ``on_line`` as it comes; (exit code, stderr)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", _LOADER, *todo], stdout=subprocess.PIPE, stderr=err,
                                text=True, env=env)
        killer = threading.Timer(timeout, proc.kill)  # a hung load ends like a crashed one
        killer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                on_line(line.rstrip("\n"))
            code = proc.wait()
        finally:
            killer.cancel()
        err.seek(0)
        return code, err.read()


def load_models(paths: list[Path], timeout: float = 1800.0,
                on_result: Callable[[int], None] | None = None) -> dict[str, LoadResult]:
    """Load every SavedModel in ``paths`` in a child process; result per path string.

    ``on_result(n)`` is called each time a result is in (n of ``len(paths)``): for a progress bar.
    """
    results: dict[str, LoadResult] = {}
    todo: list[str] = []
    for p in paths:
        if _is_tf1_module(p):
            results[str(p)] = LoadResult(str(p), True, (), "TF1 hub module format: not loadable by "
                                         "tf.saved_model.load; structure checked only")
        else:
            todo.append(str(p))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    while todo:
        current: str | None = None

        def on_line(line: str) -> None:
            nonlocal current
            if line.startswith("BEGIN "):
                current = json.loads(line[6:])
            elif line.startswith("RESULT "):
                doc = json.loads(line[7:])
                results[doc["path"]] = LoadResult(doc["path"], bool(doc["ok"]), tuple(doc.get("signatures", ())),
                                                  str(doc.get("error", "")))
                current = None
                if on_result is not None:
                    on_result(len(results))

        returncode, stderr = _run_loader(todo, env, timeout, on_line)
        if current is not None:  # the child died while loading ``current``
            tail = " ".join(stderr.split()[-30:])[:300]
            results[current] = LoadResult(current, False, (), f"the loader crashed (exit {returncode}): {tail}")
        elif not any(item in results for item in todo):  # died before starting (no TensorFlow?)
            tail = " ".join(stderr.split()[-30:])[:300]
            for item in todo:
                results[item] = LoadResult(item, False, (), f"cannot run tf.saved_model.load: {tail}")
        todo = [item for item in todo if item not in results]
    return results
