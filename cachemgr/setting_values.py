"""The parsers of setting values: each checks and converts a value from any source.

A value from the environment is a string; from TOML it is already typed. Every error names its
source (file and key, variable, or flag) and the fix.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachemgr.errors import ConfigError

Mirror = tuple[str, str]
Parser = Callable[[Any, str], Any]
MAX_WORKERS = 64
_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


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


def parse_bool(value: Any, source: str) -> bool:
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


def at_least(minimum: int) -> Parser:
    return lambda value, source: _int(value, source, minimum)


def parse_path(value: Any, source: str) -> Path:
    return Path(str(value)).expanduser()


def parse_ca_bundle(value: Any, source: str) -> Path:
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(f"{source}: CA bundle {path} does not exist; fix the path")
    return path


def parse_token(value: Any, source: str) -> str:
    if not isinstance(value, str) or len(value) < 8:
        raise ConfigError(f"{source}: token must be a string of at least 8 characters")
    return value


@dataclass(frozen=True)
class UpstreamGroup:
    """One group of upstreams, CVMFS style: pick at random within it, fail over to the next group."""

    urls: tuple[str, ...]
    proxy: str | None = None  # an HTTP proxy (e.g. Squid) for this group; else ``Settings.proxy``


_UPSTREAM_SCHEMES = ("http://", "https://", "oci://")


def _upstream_url(url: Any, source: str) -> str:
    if not isinstance(url, str) or not url.startswith(_UPSTREAM_SCHEMES):
        raise ConfigError(
            f"{source}: upstream {url!r} must start with http://, https:// or oci://"
        )
    return url.rstrip("/")


def parse_proxy(value: Any, source: str) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigError(f"{source}: proxy {value!r} must be an http:// or https:// URL, e.g. http://squid:3128")
    return value.rstrip("/")


def _upstream_group(item: Any, source: str) -> UpstreamGroup:
    if isinstance(item, str):
        return UpstreamGroup((_upstream_url(item, source),))
    if isinstance(item, list | tuple):
        urls = tuple(_upstream_url(u, source) for u in item)
        proxy = None
    elif isinstance(item, Mapping):
        unknown = set(item) - {"urls", "proxy"}
        if unknown or not isinstance(item.get("urls"), list):
            raise ConfigError(f"{source}: an upstream group table is {{urls = [...], proxy = \"http://...\"}}")
        urls = tuple(_upstream_url(u, source) for u in item["urls"])
        proxy = parse_proxy(item["proxy"], source) if item.get("proxy") else None
    else:
        raise ConfigError(f"{source}: an upstream group must be a URL, a list of URLs or a table")
    if not urls:
        raise ConfigError(f"{source}: an upstream group is empty; remove it or list its URLs")
    return UpstreamGroup(urls, proxy)


def parse_upstreams(value: Any, source: str) -> tuple[UpstreamGroup, ...]:
    """Ordered groups: "a|b;c" (environment; plain spaces also separate groups) or a TOML list
    whose items are a URL, a list of URLs, or a table {urls = [...], proxy = "..."}."""
    if isinstance(value, str):
        text = value.strip()
        groups = text.split(";") if (";" in text or "|" in text) else text.split()
        return tuple(_upstream_group([u.strip() for u in g.split("|") if u.strip()], source)
                     for g in groups if g.strip())
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{source}: upstreams must be a list of groups, e.g. [[\"http://a:8470\"]]")
    return tuple(_upstream_group(item, source) for item in value)


def parse_node_id(value: Any, source: str) -> str:
    text = str(value)
    if not _NODE_ID.fullmatch(text):
        raise ConfigError(f"{source}: node id {text!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return text


FAULT_SPEC = re.compile(r"^(write|rename):([1-9][0-9]{0,6})(?::(exit|eio))?$")


def parse_fault_at(value: Any, source: str) -> str:
    """A crash-test hook (store/faults.py): ``write:N`` or ``rename:N``, optionally ``:eio``."""
    text = str(value).strip()
    if not FAULT_SPEC.fullmatch(text):
        raise ConfigError(f"{source}: {value!r} is not a fault point; use write:N or rename:N (optionally :eio); "
                          "it is a test hook, leave it unset otherwise")
    return text


def one_of(*allowed: str) -> Parser:
    def parse(value: Any, source: str) -> str:
        text = str(value).strip().lower()
        if text not in allowed:
            raise ConfigError(f"{source}: {value!r} is not one of {', '.join(allowed)}")
        return text

    return parse


def parse_hosts(value: Any, source: str) -> tuple[str, ...]:
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(h, str) and h for h in items):
        raise ConfigError(f"{source}: must be a list of HOST[:PORT], e.g. registry.internal:5000")
    return tuple(items)


def masked(url: str) -> str:
    """``url`` with any password in it replaced by ``***`` (for log lines and messages)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def proxy_for(host: str, proxy: str | None, no_proxy: tuple[str, ...]) -> str | None:
    """``proxy``, or None when ``host`` (a name, ``HOST:PORT`` or a URL) is one ``no_proxy`` names:
    curl's rules, "*", a host, or a domain suffix (leading dot optional); ports are not compared."""
    if proxy is None or not no_proxy:
        return proxy
    name = (urllib.parse.urlsplit(host if "://" in host else f"//{host}").hostname or "").lower()
    for entry in no_proxy:
        text = entry.strip().lower().lstrip(".")
        bypass = text[1:].split("]")[0] if text.startswith("[") else text if text.count(":") > 1 else text.split(":")[0]
        if bypass == "*" or name == bypass or name.endswith("." + bypass):
            return None
    return proxy


def parse_workers(value: Any, source: str) -> int | None:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    count = _int(value, source, minimum=1)
    if count > MAX_WORKERS:
        raise ConfigError(f"{source}: {count} workers is more than {MAX_WORKERS}; use 'auto' or fewer")
    return count


def parse_trusted_keys(value: Any, source: str) -> tuple[str, ...]:
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


def parse_listen(value: Any, source: str) -> tuple[str, ...]:
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{source}: listen must be HOST:PORT or a list of them")
    for item in items:
        host, sep, port = str(item).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"{source}: listen address {item!r} must be HOST:PORT, e.g. 127.0.0.1:8470")
    return tuple(str(i) for i in items)
