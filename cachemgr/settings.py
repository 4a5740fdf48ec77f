"""Settings: one frozen object, built once from defaults, config file, environment and flags.

Nothing here runs at import time; callers pass the environment in explicitly.
Precedence, lowest first: built-in defaults, /etc/cachemgr/config.toml,
~/.config/cachemgr/config.toml (or ``--config`` / CACHEMGR_CONFIG instead of both),
CACHEMGR_* environment variables, command-line flags.

Each field of :class:`Settings` declares, in one place, its default, the parser that checks
and converts a value from any source (the TOML key is the field name; a value from the
environment is a string), and its environment variable. A hand-made table, not pydantic or
msgspec: the parsers are the library's own (sizes, durations, mirror rules, public keys),
every error must name its source (file and key, variable, or flag) and the fix, and a
compiled validation library would be loaded by every CLI run and by the shim's daemon.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cachemgr.errors import ConfigError
from cachemgr.setting_values import (
    MAX_WORKERS,
    Mirror,
    Parser,
    UpstreamGroup,
    at_least,
    one_of,
    parse_bool,
    parse_ca_bundle,
    parse_fault_at,
    parse_hosts,
    parse_listen,
    parse_mirrors,
    parse_node_id,
    parse_path,
    parse_proxy,
    parse_token,
    parse_trusted_keys,
    parse_upstreams,
    parse_workers,
)
from cachemgr.units import parse_duration, parse_size

__all__ = ["MAX_WORKERS", "Mirror", "Settings", "UpstreamGroup", "load_settings", "parse_mirrors"]

MAX_AUTO_WORKERS = 4


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


def _setting(default: Any, parse: Parser, env: str | None = None) -> Any:
    """A field of Settings: its default, the parser for any source, and its environment variable."""
    return field(default=default, metadata={"parse": parse, "env": env})


@dataclass(frozen=True)
class Settings:
    home: Path = _setting(Path(), parse_path, "CACHEMGR_HOME")
    offline: bool = _setting(False, parse_bool, "CACHEMGR_OFFLINE")
    # The view (what TFHUB_CACHE_DIR points at): HOME/view, or a directory of its own, e.g. a
    # node-local one whose links point into a shared store (then at one path on every node).
    view: Path | None = _setting(None, parse_path, "CACHEMGR_VIEW")
    mirrors: tuple[Mirror, ...] = _setting((), parse_mirrors, "CACHEMGR_MIRRORS")
    max_model_bytes: int = _setting(64 * 1024**3, parse_size, "CACHEMGR_MAX_MODEL_SIZE")
    max_entries: int = _setting(100_000, at_least(1), "CACHEMGR_MAX_ENTRIES")
    ca_bundle: Path | None = _setting(None, parse_ca_bundle, "CACHEMGR_CA_BUNDLE")
    concurrency: int = _setting(4, at_least(1), "CACHEMGR_CONCURRENCY")
    retries: int = _setting(5, at_least(0), "CACHEMGR_RETRIES")
    backoff: float = _setting(0.5, parse_duration, "CACHEMGR_BACKOFF")
    connect_timeout: float = _setting(30.0, parse_duration)
    read_timeout: float = _setting(300.0, parse_duration)
    # curl's --speed-limit/--speed-time: under low_speed_limit bytes/s for low_speed_time seconds
    # is a stall (retried with a Range resume, then an error); either one 0 turns the rule off.
    low_speed_limit: int = _setting(1024, parse_size, "CACHEMGR_LOW_SPEED_LIMIT")
    low_speed_time: float = _setting(60.0, parse_duration, "CACHEMGR_LOW_SPEED_TIME")
    temp_grace: float = _setting(24 * 3600.0, parse_duration)
    # daemon
    socket: Path | None = _setting(None, parse_path, "CACHEMGR_SOCKET")
    listen: tuple[str, ...] = _setting((), parse_listen, "CACHEMGR_LISTEN")
    token: str | None = _setting(None, parse_token, "CACHEMGR_TOKEN")
    upstreams: tuple[UpstreamGroup, ...] = _setting((), parse_upstreams, "CACHEMGR_UPSTREAMS")
    # An HTTP proxy for upstreams without one of their own; HTTP_PROXY/http_proxy when unset.
    proxy: str | None = _setting(None, parse_proxy, "CACHEMGR_PROXY")
    # Hosts reached directly, never through ``proxy`` (curl's NO_PROXY rules); NO_PROXY when unset.
    no_proxy: tuple[str, ...] = _setting((), parse_hosts, "CACHEMGR_NO_PROXY")
    # OCI registries: plain HTTP only for these (and for localhost, docker's rule);
    # credentials from a docker config.json (REGISTRY_AUTH_FILE, else $DOCKER_CONFIG/config.json,
    # else ~/.docker/config.json; the file need not exist).
    insecure_registries: tuple[str, ...] = _setting((), parse_hosts, "CACHEMGR_INSECURE_REGISTRIES")
    registry_auth_file: Path | None = _setting(None, parse_path, "REGISTRY_AUTH_FILE")
    # Cluster: this node's id (default: the hostname), how long a lease lives without renewal
    # (renewed at a third of that), and how long a silent node's uses and pins still count.
    node_id: str = _setting("", parse_node_id, "CACHEMGR_NODE_ID")
    lease_timeout: float = _setting(60.0, parse_duration, "CACHEMGR_LEASE_TIMEOUT")
    node_timeout: float = _setting(7 * 24 * 3600.0, parse_duration, "CACHEMGR_NODE_TIMEOUT")
    # How long a node's filesystem client may show stale names and attributes (GlusterFS FUSE:
    # its entry/attribute timeout; NFS: actimeo). None: guessed from the filesystem (store/fskind.py).
    fs_cache_timeout: float | None = _setting(None, parse_duration, "CACHEMGR_FS_CACHE_TIMEOUT")
    # A store call (in the daemon's I/O threads) running longer than this is reported as stuck.
    stuck_io_after: float = _setting(30.0, parse_duration, "CACHEMGR_STUCK_IO_AFTER")
    # Daemon front door: the time a client has to send its request head and body, and the cap
    # on open TCP connections from one peer address (slowloris, idle floods).
    client_timeout: float = _setting(30.0, parse_duration, "CACHEMGR_CLIENT_TIMEOUT")
    max_peer_connections: int = _setting(64, at_least(1), "CACHEMGR_MAX_PEER_CONNECTIONS")
    log_level: str = _setting("info", one_of("debug", "info", "warning", "error"), "CACHEMGR_LOG_LEVEL")
    log_format: str = _setting("text", one_of("text", "json"), "CACHEMGR_LOG_FORMAT")
    prefetch_file: Path | None = _setting(None, parse_path, "CACHEMGR_PREFETCH_FILE")
    max_body: int = _setting(1024 * 1024, parse_size)
    # Processes that accept on the daemon's sockets: the primary plus workers-1 that answer
    # hits and forward everything else to it. None (auto): one per two cores, at most
    # MAX_AUTO_WORKERS: the clients of a node's daemon run on that node's cores too.
    workers: int | None = _setting(None, parse_workers, "CACHEMGR_WORKERS")
    # Public keys ("ssh-ed25519 AAAA...") whose signatures `import` accepts; non-empty = required.
    trusted_keys: tuple[str, ...] = _setting((), parse_trusted_keys, "CACHEMGR_TRUSTED_KEYS")
    # Lifecycle: watermarks for automatic pruning (daemon) and background scrubbing.
    prune_max_size: int | None = _setting(None, parse_size, "CACHEMGR_PRUNE_MAX_SIZE")
    prune_min_free: int | None = _setting(None, parse_size, "CACHEMGR_PRUNE_MIN_FREE")
    prune_unused_for: float | None = _setting(None, parse_duration, "CACHEMGR_PRUNE_UNUSED_FOR")
    prune_keep_versions: int | None = _setting(None, at_least(1), "CACHEMGR_PRUNE_KEEP_VERSIONS")
    prune_grace: float = _setting(3600.0, parse_duration, "CACHEMGR_PRUNE_GRACE")
    scrub_rate: int | None = _setting(None, parse_size, "CACHEMGR_SCRUB_RATE")
    scrub_max_duration: float = _setting(600.0, parse_duration, "CACHEMGR_SCRUB_MAX_DURATION")
    # A test hook for crash tests (store/faults.py): crash at the Nth write or rename. Leave unset.
    fault_at: str | None = _setting(None, parse_fault_at, "CACHEMGR_FAULT_AT")
    config_files: tuple[Path, ...] = field(default=())

    @property
    def upstream_urls(self) -> tuple[str, ...]:
        """Every upstream URL, in group order."""
        return tuple(url for group in self.upstreams for url in group.urls)

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



# The TOML key max_model_size names the field max_model_bytes; every other key is its field's name.
_FILE_ALIASES = {"max_model_size": "max_model_bytes"}
_PARSERS: dict[str, Parser] = {f.name: f.metadata["parse"] for f in fields(Settings) if "parse" in f.metadata}
_ENV_KEYS: dict[str, str] = {f.metadata["env"]: f.name for f in fields(Settings) if f.metadata.get("env")}


def _convert(key: str, value: Any, source: str) -> Any:
    parse = _PARSERS.get(key)
    if parse is None:
        raise ConfigError(f"{source}: unknown setting {key!r}")
    return parse(value, source)


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML ({exc}); fix the syntax") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read ({exc.strerror})") from None
    values: dict[str, Any] = {}
    known = set(_PARSERS) | set(_FILE_ALIASES)
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"config file {path}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        name = _FILE_ALIASES.get(key, key)
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
    if "proxy" not in values:
        for var in ("HTTP_PROXY", "http_proxy"):
            if env.get(var):
                values["proxy"] = _convert("proxy", env[var], f"environment variable {var}")
                break
    if "no_proxy" not in values:
        for var in ("NO_PROXY", "no_proxy"):
            if env.get(var):
                values["no_proxy"] = _convert("no_proxy", env[var], f"environment variable {var}")
                break
    if "registry_auth_file" not in values:
        docker = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else (
            Path(env.get("HOME", "~")).expanduser() / ".docker")
        values["registry_auth_file"] = docker / "config.json"
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _convert(key, value, f"option --{key.replace('_', '-')}")
    home = values.pop("home", None) or default_home(env)
    values.setdefault("socket", default_socket(env))
    values.setdefault("node_id", parse_node_id(socket.gethostname()[:64] or "node", "the hostname"))
    return replace(Settings(home=Path(home)), **values, config_files=tuple(files))
