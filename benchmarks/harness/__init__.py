"""The benchmarks' harness: what every benchmark that runs children shares (stdlib only, as the
children import it too).

- ``measure``: this process's RSS, peak RSS and CPU; other processes' CPU (a daemon's tree); the
  machine's busy time and the idle-machine gate ``QuietGate``; ``percentiles``;
- ``children``: the children's environment (``bench_env``) and command lines, running one and
  timing it (``run_child``), several at once (``ChildPipe``, ``pump``, the ready / go / result
  protocol), the common command-line options (``add_common_args``);
- ``models``: the big SavedModel's ``.tar.gz`` and the tiny ones (built once, cached under
  ``--workdir``), the archive ``Server``, ``compare_trees``;
- ``daemons`` (import it by name: ``benchmarks.harness.daemons``): ``Daemon``, the tests' daemon
  runner (``tests/support/daemons.py``) plus readiness, health and CPU accounting.

Every name of the first three is importable from the package itself. Scripts import it as
``benchmarks.harness`` when imported as part of the ``benchmarks`` package, as ``harness``
when run as ``python benchmarks/SCRIPT.py`` (then ``benchmarks/`` is first on ``sys.path``).
"""

from __future__ import annotations

import sys

from .children import (
    REPO_ROOT,
    ChildError,
    ChildPipe,
    ChildResult,
    add_common_args,
    await_go,
    bench_env,
    cachemgr_add,
    cachemgr_cmd,
    child_cmd,
    dispatch_child,
    emit,
    log,
    pump,
    reap,
    run_child,
    wait_ready,
    wait_results,
)
from .measure import (
    QuietGate,
    child_pids,
    cpu_seconds,
    host_busy_seconds,
    percentiles,
    proc_cpu_seconds,
    proc_status_kib,
    reset_peak_rss,
    tree_cpu_seconds,
)
from .models import (
    CHILDREN,
    MIB,
    URL_PATH,
    Server,
    compare_trees,
    ensure_archive,
    ensure_small_models,
    harness_cmd,
    tree_listing,
)

# The checkout's tests/ (tests.support: the models, the daemon runner) is not installed.
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

__all__ = [
    "CHILDREN", "MIB", "REPO_ROOT", "URL_PATH", "ChildError", "ChildPipe", "ChildResult", "QuietGate", "Server",
    "add_common_args", "await_go", "bench_env", "cachemgr_add", "cachemgr_cmd", "child_cmd", "child_pids",
    "compare_trees", "cpu_seconds", "dispatch_child", "emit", "ensure_archive", "ensure_small_models",
    "harness_cmd", "host_busy_seconds", "log", "percentiles", "proc_cpu_seconds", "proc_status_kib", "pump",
    "reap", "reset_peak_rss", "run_child", "tree_cpu_seconds", "tree_listing", "wait_ready", "wait_results",
]
