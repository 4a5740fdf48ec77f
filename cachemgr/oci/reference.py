"""OCI references: ``oci://HOST[:PORT]/REPO[:TAG]`` parsing, and the handle -> repository:tag mapping.

The mapping (docs/oci.md): a tfhub.dev handle ``https://tfhub.dev/P/M/V`` is ``PREFIX/P/M:V``;
any other handle keeps its host (``:PORT`` as ``-PORT``) as its first component, e.g.
``https://www.kaggle.com/models/o/m/fw/var/1`` is ``PREFIX/www.kaggle.com/models/o/m/fw/var:1``.
The last path segment is the tag. A component the registry grammar forbids (upper case,
separators at an end or doubled) is lower-cased and cleaned, and gets ``-x`` plus 8 hex digits
of the sha256 of the original, so that two handles never share a repository by accident.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from dataclasses import dataclass

from cachemgr.errors import UsageError
from cachemgr.handles import parse_handle

# distribution/reference: path components, tags, the 255-character cap on a repository name
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?\Z|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?\Z")
MAX_NAME = 255
TFHUB_HOST = "tfhub.dev"


@dataclass(frozen=True)
class Registry:
    """A registry and a repository prefix in it: ``oci://HOST[:PORT]/PREFIX``."""

    host: str  # HOST[:PORT], as docker names it (and as config.json "auths" keys it)
    prefix: str

    @property
    def url(self) -> str:
        return f"oci://{self.host}/{self.prefix}".rstrip("/")

    def repository(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path


@dataclass(frozen=True)
class Reference:
    """One artifact: ``oci://HOST[:PORT]/REPO:TAG`` (or ``@sha256:...``)."""

    host: str
    repository: str
    tag: str

    def __str__(self) -> str:
        sep = "@" if self.tag.startswith("sha256:") else ":"
        return f"oci://{self.host}/{self.repository}{sep}{self.tag}"


def is_oci(text: str) -> bool:
    return text.startswith("oci://")


def _bad(text: str, why: str) -> UsageError:
    return UsageError(f"invalid registry reference {text!r}: {why}; expected oci://HOST[:PORT]/REPOSITORY:TAG "
                      "(or oci://HOST[:PORT]/PREFIX for push and upstreams)")


def _split_host(text: str) -> tuple[str, str]:
    if not is_oci(text):
        raise _bad(text, "it does not start with oci://")
    host, _, rest = text.removeprefix("oci://").partition("/")
    if not _HOST.match(host):
        raise _bad(text, f"{host!r} is not HOST[:PORT]")
    return host.lower(), rest.strip("/")


def _check_repository(text: str, repo: str) -> None:
    parts = repo.split("/")
    bad = [p for p in parts if not _COMPONENT.match(p)]
    if bad:
        raise _bad(text, f"repository component {bad[0]!r} is not allowed by the registry grammar (lower-case "
                         "letters and digits, single '.', '_', '__' or '-' runs between them)")
    if len(repo) > MAX_NAME:
        raise _bad(text, f"the repository name is longer than {MAX_NAME} characters")


def parse_registry(text: str) -> Registry:
    """``oci://HOST[:PORT][/PREFIX]``: where ``push --to`` and an ``oci://`` upstream point."""
    host, prefix = _split_host(text)
    if prefix:
        _check_repository(text, prefix)
    return Registry(host, prefix)


def parse_reference(text: str) -> Reference:
    """``oci://HOST[:PORT]/REPO:TAG`` or ``.../REPO@sha256:HEX``."""
    host, rest = _split_host(text)
    if "@" in rest:
        repo, _, tag = rest.partition("@")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", tag):
            raise _bad(text, f"digest {tag!r} is not sha256:<64 hex digits>")
    else:
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon <= slash:
            raise _bad(text, "it has no :TAG")
        repo, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise _bad(text, f"tag {tag!r} is not allowed by the registry grammar")
    if not repo:
        raise _bad(text, "it has no repository")
    _check_repository(text, repo)
    return Reference(host, repo, tag)


def _hash8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def escape_component(text: str) -> str:
    """``text`` as one repository component: itself when the grammar allows it, else a cleaned,
    lower-case form with ``-x`` and 8 hex digits of its sha256 (collision-free in practice)."""
    if _COMPONENT.match(text):
        return text
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"
    return f"{cleaned}-x{_hash8(text)}"


def escape_tag(text: str) -> str:
    if _TAG.match(text):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).lstrip(".-")[:100] or "x"
    return f"{cleaned}-x{_hash8(text)}"


def reference_for(registry: Registry, handle_text: str) -> Reference:
    """Where ``handle_text`` lives in ``registry`` (the documented mapping)."""
    handle = parse_handle(handle_text)
    parts = urllib.parse.urlsplit(handle.canonical)
    segments = [urllib.parse.unquote(s) for s in parts.path.split("/") if s]
    host = parts.netloc.lower()
    names = segments[:-1] if host == TFHUB_HOST else [host.replace(":", "-").strip("[]"), *segments[:-1]]
    tag = escape_tag(segments[-1])
    if parts.query:
        tag = f"{tag[:100]}-q{_hash8(parts.query)}"
    repo = registry.repository("/".join(escape_component(n) for n in names))
    if len(repo) > MAX_NAME:
        raise UsageError(f"{handle.canonical}: its repository name {repo[:60]}... would be longer than {MAX_NAME} "
                         "characters, which registries refuse; push it under a shorter --to prefix")
    return Reference(registry.host, repo, tag)
