"""Settings: one frozen object, built once from defaults, config file, environment and flags.

Nothing here runs at import time; callers pass the environment in explicitly.
Precedence, lowest first: built-in defaults, /etc/cachemgr/config.toml,
~/.config/cachemgr/config.toml (or ``--config`` / CACHEMGR_CONFIG instead of both),
CACHEMGR_* environment variables, command-line flags.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cachemgr.errors import ConfigError
from cachemgr.units import parse_duration, parse_size

Mirror = tuple[str, str]


@dataclass(frozen=True)
class Settings:
    home: Path
    offline: bool = False
    mirrors: tuple[Mirror, ...] = ()
    max_model_bytes: int = 64 * 1024**3
    max_entries: int = 100_000
    ca_bundle: Path | None = None
    concurrency: int = 4
    retries: int = 5
    backoff: float = 0.5
    connect_timeout: float = 30.0
    read_timeout: float = 300.0
    temp_grace: float = 24 * 3600.0
    # daemon
    socket: Path | None = None
    listen: tuple[str, ...] = ()
    token: str | None = None
    upstreams: tuple[str, ...] = ()
    prefetch_file: Path | None = None
    max_body: int = 1024 * 1024
    # Processes that accept on the daemon's sockets: the primary plus workers-1 that answer
    # hits and forward everything else to it. None (auto): one per two cores, at most
    # MAX_AUTO_WORKERS: the clients of a node's daemon run on that node's cores too.
    workers: int | None = None
    # Public keys ("ssh-ed25519 AAAA...") whose signatures `import` accepts; non-empty = required.
    trusted_keys: tuple[str, ...] = ()
    # Lifecycle: watermarks for automatic pruning (daemon) and background scrubbing.
    prune_max_size: int | None = None
    prune_min_free: int | None = None
    prune_unused_for: float | None = None
    prune_keep_versions: int | None = None
    prune_grace: float = 3600.0
    scrub_rate: int | None = None
    scrub_max_duration: float = 600.0
    config_files: tuple[Path, ...] = field(default=())

    @property
    def view_dir(self) -> Path:
        """The directory that TFHUB_CACHE_DIR points at."""
        return self.home / "view"

    @property
    def prefetch_path(self) -> Path:
        return self.prefetch_file or self.home / "prefetch.toml"

    def worker_count(self, cpus: int | None) -> int:
        """How many processes serve the sockets: ``workers``, else one per two cores, capped.

        Measured on 2 cores with the clients on the same machine (benchmarks/
        bench_resolve_latency.py), a second process raised hit p99 (x1.3-1.5) and did not raise
        throughput: the clients need the other core. Hence half the cores.
        """
        if self.workers is not None:
            return self.workers
        return max(1, min((cpus or 1) // 2, MAX_AUTO_WORKERS))


MAX_AUTO_WORKERS = 4
MAX_WORKERS = 64


def usable_cpus() -> int | None:
    """Cores this process may run on: its CPU affinity (a Slurm or cgroup allocation), else all."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def default_socket(env: Mapping[str, str]) -> Path:
    """$CACHEMGR_SOCKET, else $XDG_RUNTIME_DIR/cachemgr.sock, else the system socket."""
    if env.get("CACHEMGR_SOCKET"):
        return Path(env["CACHEMGR_SOCKET"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "cachemgr.sock"
    return Path("/run/cachemgr/cachemgr.sock")


def default_home(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "cachemgr"


def default_config_files(env: Mapping[str, str]) -> list[Path]:
    user_base = env.get("XDG_CONFIG_HOME") or str(
        Path(env.get("HOME", "~")).expanduser() / ".config"
    )
    return [Path("/etc/cachemgr/config.toml"), Path(user_base) / "cachemgr" / "config.toml"]


def parse_mirrors(spec: str | Mapping[str, Any] | list[Any], source: str) -> tuple[Mirror, ...]:
    """Mirror rules from "PREFIX=BASE ..." or a TOML table {PREFIX = BASE}."""
    pairs: list[tuple[str, str]] = []
    if isinstance(spec, str):
        for item in spec.split():
            prefix, sep, base = item.partition("=")
            if not sep or not prefix or not base:
                raise ConfigError(
                    f"{source}: mirror rule {item!r} is malformed; write PREFIX=BASE, "
                    "e.g. https://tfhub.dev/=http://mirror.internal:8470/"
                )
            pairs.append((prefix, base))
    elif isinstance(spec, Mapping):
        for prefix, base in spec.items():
            if not isinstance(base, str) or not base:
                raise ConfigError(f"{source}: mirror for {prefix!r} must be a URL string")
            pairs.append((str(prefix), base))
    else:
        raise ConfigError(f"{source}: mirrors must be a table of PREFIX = BASE")
    for prefix, base in pairs:
        for url in (prefix, base):
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{source}: mirror URL {url!r} must start with http:// or https://")
    # Longest prefix first so that the most specific rule wins.
    return tuple(sorted(pairs, key=lambda p: -len(p[0])))


def _bool(value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{source}: {value!r} is not a boolean; use 1/0 or true/false")


def _int(value: Any, source: str, minimum: int = 0) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {value!r} is not a whole number") from None
    if number < minimum:
        raise ConfigError(f"{source}: {number} is below the minimum {minimum}")
    return number


# key -> converter(value, source); the same keys are used in TOML and (upper-cased) in env.
def _convert(key: str, value: Any, source: str) -> Any:
    if key == "home":
        return Path(str(value)).expanduser()
    if key == "offline":
        return _bool(value, source)
    if key == "mirrors":
        return parse_mirrors(value, source)
    if key in ("max_model_bytes", "prune_max_size", "prune_min_free", "scrub_rate"):
        return parse_size(value, source)
    if key in ("max_entries", "concurrency", "retries", "prune_keep_versions"):
        return _int(value, source, minimum=1 if key != "retries" else 0)
    if key == "ca_bundle":
        path = Path(str(value)).expanduser()
        if not path.is_file():
            raise ConfigError(f"{source}: CA bundle {path} does not exist; fix the path")
        return path
    if key in ("backoff", "connect_timeout", "read_timeout", "temp_grace", "prune_unused_for", "prune_grace",
               "scrub_max_duration"):
        return parse_duration(value, source)
    if key in ("socket", "prefetch_file"):
        return Path(str(value)).expanduser()
    if key == "listen":
        return _listen(value, source)
    if key == "token":
        if not isinstance(value, str) or len(value) < 8:
            raise ConfigError(f"{source}: token must be a string of at least 8 characters")
        return value
    if key == "upstreams":
        items = value.split() if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(u, str) for u in items):
            raise ConfigError(f"{source}: upstreams must be a list of URLs")
        for url in items:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{source}: upstream {url!r} must start with http:// or https://")
        return tuple(u.rstrip("/") for u in items)
    if key == "max_body":
        return parse_size(value, source)
    if key == "workers":
        if isinstance(value, str) and value.strip().lower() == "auto":
            return None
        count = _int(value, source, minimum=1)
        if count > MAX_WORKERS:
            raise ConfigError(f"{source}: {count} workers is more than {MAX_WORKERS}; use 'auto' or fewer")
        return count
    if key == "trusted_keys":
        return _trusted_keys(value, source)
    raise ConfigError(f"{source}: unknown setting {key!r}")


def _trusted_keys(value: Any, source: str) -> tuple[str, ...]:
    """Public keys from a list of key lines or .pub files (TOML), or "FILE:FILE" (environment)."""
    from cachemgr.signing import read_public_keys  # deferred: keeps settings light

    items = value.split(":") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigError(f"{source}: trusted_keys must be a list of public keys or .pub files")
    keys: list[str] = []
    for item in items:
        if isinstance(item, str) and item.strip():
            keys += read_public_keys(item.strip(), source)
    return tuple(dict.fromkeys(keys))


_FILE_KEYS = {
    f.name for f in fields(Settings) if f.name not in ("config_files",)
} | {"max_model_size"}
_ENV_KEYS = {
    "CACHEMGR_HOME": "home",
    "CACHEMGR_OFFLINE": "offline",
    "CACHEMGR_MIRRORS": "mirrors",
    "CACHEMGR_MAX_MODEL_SIZE": "max_model_bytes",
    "CACHEMGR_MAX_ENTRIES": "max_entries",
    "CACHEMGR_CA_BUNDLE": "ca_bundle",
    "CACHEMGR_CONCURRENCY": "concurrency",
    "CACHEMGR_RETRIES": "retries",
    "CACHEMGR_BACKOFF": "backoff",
    "CACHEMGR_SOCKET": "socket",
    "CACHEMGR_LISTEN": "listen",
    "CACHEMGR_TOKEN": "token",
    "CACHEMGR_UPSTREAMS": "upstreams",
    "CACHEMGR_PREFETCH_FILE": "prefetch_file",
    "CACHEMGR_WORKERS": "workers",
    "CACHEMGR_TRUSTED_KEYS": "trusted_keys",
    "CACHEMGR_PRUNE_MAX_SIZE": "prune_max_size",
    "CACHEMGR_PRUNE_MIN_FREE": "prune_min_free",
    "CACHEMGR_PRUNE_UNUSED_FOR": "prune_unused_for",
    "CACHEMGR_PRUNE_KEEP_VERSIONS": "prune_keep_versions",
    "CACHEMGR_PRUNE_GRACE": "prune_grace",
    "CACHEMGR_SCRUB_RATE": "scrub_rate",
    "CACHEMGR_SCRUB_MAX_DURATION": "scrub_max_duration",
}


def _listen(value: Any, source: str) -> tuple[str, ...]:
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{source}: listen must be HOST:PORT or a list of them")
    for item in items:
        host, sep, port = str(item).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"{source}: listen address {item!r} must be HOST:PORT, e.g. 127.0.0.1:8470")
    return tuple(str(i) for i in items)


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML ({exc}); fix the syntax") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read ({exc.strerror})") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _FILE_KEYS:
            known = ", ".join(sorted(_FILE_KEYS))
            raise ConfigError(f"config file {path}: unknown key {key!r}; known keys: {known}")
        name = "max_model_bytes" if key == "max_model_size" else key
        values[name] = _convert(name, value, f"config file {path}, key {key!r}")
    return values


def load_settings(
    env: Mapping[str, str],
    config: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the Settings for one process run."""
    explicit = config or (Path(env["CACHEMGR_CONFIG"]) if env.get("CACHEMGR_CONFIG") else None)
    if explicit is not None and not explicit.is_file():
        raise ConfigError(f"config file {explicit} does not exist; fix --config/CACHEMGR_CONFIG")
    files = [explicit] if explicit else [p for p in default_config_files(env) if p.is_file()]
    values: dict[str, Any] = {}
    for path in files:
        values.update(_read_config_file(path))
    for var, key in _ENV_KEYS.items():
        if env.get(var, "") != "":
            values[key] = _convert(key, env[var], f"environment variable {var}")
    if "ca_bundle" not in values:
        for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
            if env.get(var):
                values["ca_bundle"] = _convert("ca_bundle", env[var], f"environment variable {var}")
                break
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _convert(key, value, f"option --{key.replace('_', '-')}")
    home = values.pop("home", None) or default_home(env)
    values.setdefault("socket", default_socket(env))
    return replace(Settings(home=Path(home)), **values, config_files=tuple(files))
