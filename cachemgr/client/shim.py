"""The client shim: a tensorflow_hub resolver that answers from the cachemgr store.

``import cachemgr.shim`` (or ``cachemgr shim install``, which does it at interpreter start)
registers a resolver that tensorflow_hub tries first:

- hit: ``TFHUB_CACHE_DIR/<sha1(handle)>`` exists and is not empty -> return it (plus one
  ``utime`` to record the use). No socket round trip. Stdlib only.
- miss: ask the daemon (``CACHEMGR_SOCKET``) to resolve; it fetches once for everyone.
- offline miss: raise an error that names the handle and the fix. ``CACHEMGR_OFFLINE=1`` in this
  process's environment asks the daemon for an offline answer (it then fetches nothing), and
  never falls back to tensorflow_hub's download.
- daemon unreachable: warn once, then fall back to tensorflow_hub's own download.

Local paths and ``gs://`` handles are left to tensorflow_hub. Nothing is read from the
environment until a handle is resolved.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import warnings
from typing import Any

_registered = False
_warned = False


class CachemgrResolveError(RuntimeError):
    """A handle cachemgr could not provide (offline miss, bad handle, upstream failure)."""


def _cache_dir() -> str:
    configured = os.environ.get("TFHUB_CACHE_DIR")
    if configured:
        return configured
    from tensorflow_hub import resolver  # the hub's own default, only when unset

    return str(resolver.tfhub_cache_dir(use_temp=True))


def _socket_path() -> str:
    if os.environ.get("CACHEMGR_SOCKET"):
        return os.environ["CACHEMGR_SOCKET"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "cachemgr.sock")
    return "/run/cachemgr/cachemgr.sock"


_managed: dict[str, str | None] = {}
_recorded: dict[str, float] = {}
RECORD_EVERY = 60.0  # seconds: last use is for prune, minute granularity is plenty


def _noted_home(cache_dir: str) -> str | None:
    """The store a view of its own belongs to (its ``.cachemgr-store`` note), if it is one."""
    try:
        with open(os.path.join(cache_dir, ".cachemgr-store"), encoding="utf-8") as fh:
            home = fh.readline().strip()
    except OSError:
        return None
    return home if home and os.path.exists(os.path.join(home, "store-format")) else None


def _record_use(cache_dir: str, name: str) -> None:
    """Touch the store's last-use record (at most once a minute per model and process)."""
    now = time.monotonic()
    if now - _recorded.get(name, -RECORD_EVERY) < RECORD_EVERY:
        return
    _recorded[name] = now
    home = _managed.get(cache_dir, "")
    if home == "":
        parent = os.path.dirname(os.path.abspath(cache_dir))
        home = parent if os.path.exists(os.path.join(parent, "store-format")) else _noted_home(cache_dir)
        _managed[cache_dir] = home
    if home is not None:
        from cachemgr.store.usage import record_use  # stdlib-only; imported on first use

        # this node's id, as the daemon and CLI record it (read now: the shim has no Settings)
        record_use(__import__("pathlib").Path(home), name, node=os.environ.get("CACHEMGR_NODE_ID"))


def _offline() -> bool:
    """This process's offline switch, ``CACHEMGR_OFFLINE`` (the daemon is asked for an offline answer)."""
    value = os.environ.get("CACHEMGR_OFFLINE", "")
    if not value:
        return False
    from cachemgr.errors import CachemgrError  # both stdlib-only; imported on a miss
    from cachemgr.setting_values import parse_bool

    try:
        return parse_bool(value, "environment variable CACHEMGR_OFFLINE")
    except CachemgrError as exc:
        raise CachemgrResolveError(f"cachemgr: {exc}") from None


def _nonempty_dir(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is not None
    except OSError:
        return False


class CachemgrResolver:
    """Registered into tensorflow_hub's resolver registry (tried before its own)."""

    def __init__(self, fallback: Any) -> None:
        self._fallback = fallback

    def is_supported(self, handle: str) -> bool:
        return isinstance(handle, str) and handle.startswith(("https://", "http://"))

    def __call__(self, handle: str) -> str:
        cache_dir = _cache_dir()
        name = hashlib.sha1(handle.encode("utf8")).hexdigest()
        path = os.path.join(cache_dir, name)
        if _nonempty_dir(path):
            _record_use(cache_dir, name)
            return path
        return self._miss(handle, cache_dir, path)

    def _miss(self, handle: str, cache_dir: str, path: str) -> str:
        from cachemgr.client.daemon_client import DaemonUnavailable, call

        socket_path = _socket_path()
        offline = _offline()
        body: dict[str, Any] = {"handle": handle, "offline": True} if offline else {"handle": handle}
        try:
            status, doc = call(socket_path, "POST", "/v1/resolve", body)
        except (DaemonUnavailable, ConnectionError, TimeoutError) as exc:
            return self._fall_back(handle, str(exc), offline)
        if status == 503:  # a worker answered, but the daemon's primary is gone: as good as unreachable
            return self._fall_back(handle, str(doc.get("error", {}).get("message", doc)), offline)
        if status != 200:
            err = doc.get("error", {})
            raise CachemgrResolveError(f"cachemgr could not provide {handle}: {err.get('message', doc)}")
        if _nonempty_dir(path):
            return path
        return str(doc.get("view") or doc["path"])

    def _fall_back(self, handle: str, why: str, offline: bool) -> str:
        global _warned
        if offline:  # tensorflow_hub's own download would go online
            raise CachemgrResolveError(f"cachemgr could not provide {handle}: the daemon is unreachable ({why}) "
                                       "and this process is offline (CACHEMGR_OFFLINE), so it is not downloaded; "
                                       "start the daemon with `cachemgr daemon` or set CACHEMGR_SOCKET")
        if not _warned:
            _warned = True
            warnings.warn(f"cachemgr: daemon unreachable ({why}); falling back to tensorflow_hub's "
                          "own download. Start it with `cachemgr daemon` or set CACHEMGR_SOCKET.",
                          RuntimeWarning, stacklevel=4)
        return str(self._fallback(handle))


def register() -> bool:
    """Put the cachemgr resolver in front of tensorflow_hub's (idempotent)."""
    global _registered
    if _registered:
        return False
    from tensorflow_hub import compressed_module_resolver, registry

    registry.resolver.add_implementation(
        CachemgrResolver(compressed_module_resolver.HttpCompressedFileResolver())
    )
    _registered = True
    return True


class _HubImportHook:
    """Registers the resolver right after tensorflow_hub is imported (for the .pth install)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow_hub":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        original = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)
            register()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install_hook() -> None:
    """Called from the .pth file: cheap, imports nothing heavy."""
    if "tensorflow_hub" in sys.modules:
        register()
    elif not any(isinstance(h, _HubImportHook) for h in sys.meta_path):
        sys.meta_path.insert(0, _HubImportHook())


install_hook()
