"""Model handles: parse, normalize, and list the exact strings tensorflow_hub hashes.

tensorflow_hub keys its cache by sha1 of the handle string *exactly as written*, so one
model is reachable under several strings (trailing slash, Kaggle short/long forms, ...).
``Handle.aliases()`` lists them all so that the view can answer every one.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from cachemgr.errors import HandleError

Kind = Literal["tfhub", "kaggle", "tfhub_cn", "http"]

_TFHUB_HOSTS = {"tfhub.dev", "www.tfhub.dev"}
_KAGGLE_HOSTS = {"kaggle.com", "www.kaggle.com"}
_CN_HOST = "hub.tensorflow.google.cn"
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")  # \Z, not $: "$" also matches before a final "\n"
_VERSION = re.compile(r"[0-9]+\Z")
_DROP_QUERY = {"tf-hub-format", "tfhub-redirect"}
CN_DOWNLOAD = "https://gcs.tensorflow.google.cn/tfhub-modules/{path}.tar.gz"


@dataclass(frozen=True)
class KaggleId:
    owner: str
    model: str
    framework: str
    variation: str
    version: str

    def short_path(self) -> str:
        return f"models/{self.owner}/{self.model}/{self.framework}/{self.variation}/{self.version}"

    def long_path(self) -> str:
        return (
            f"models/{self.owner}/{self.model}/frameworks/{self.framework}"
            f"/variations/{self.variation}/versions/{self.version}"
        )


@dataclass(frozen=True)
class Handle:
    """A parsed handle. ``canonical`` names the model; ``fetch_url`` is what to download."""

    asked: str
    kind: Kind
    canonical: str
    fetch_url: str
    compressed_query: bool
    kaggle: KaggleId | None = None

    def aliases(self) -> tuple[str, ...]:
        """Every string under which tensorflow_hub code may ask for this model."""
        out: list[str] = [self.asked, self.canonical]
        if self.kind == "kaggle" and self.kaggle is not None:
            for host in ("https://www.kaggle.com/", "https://kaggle.com/"):
                out += [host + self.kaggle.short_path(), host + self.kaggle.long_path()]
        elif self.kind == "tfhub":
            path = urllib.parse.urlsplit(self.canonical).path
            out += [f"https://tfhub.dev{path}", f"http://tfhub.dev{path}"]
        with_slash = [a + "/" for a in out if "?" not in a and not a.endswith("/")]
        return tuple(dict.fromkeys(out + with_slash))


def _bad(text: str, why: str) -> HandleError:
    return HandleError(
        f"invalid handle {text!r}: {why}; expected e.g. https://tfhub.dev/google/nnlm-en-dim128/2, "
        "https://www.kaggle.com/models/OWNER/MODEL/FRAMEWORK/VARIATION/VERSION or "
        "OWNER/MODEL/FRAMEWORK/VARIATION/VERSION"
    )


def _check_segments(text: str, segments: list[str]) -> None:
    for seg in segments:
        if not _SEGMENT.match(seg):
            raise _bad(text, f"path segment {seg!r} is not a valid name")


def _kaggle_from_segments(text: str, segs: list[str]) -> KaggleId:
    if len(segs) == 5:
        owner, model, fw, var, ver = segs
    elif len(segs) == 8 and segs[2:7:2] == ["frameworks", "variations", "versions"]:
        owner, model, _, fw, _, var, _, ver = segs
    else:
        raise _bad(text, "a Kaggle model needs OWNER/MODEL/FRAMEWORK/VARIATION/VERSION")
    _check_segments(text, [owner, model, fw, var])
    if not _VERSION.match(ver):
        raise _bad(text, f"version {ver!r} must be a number")
    return KaggleId(owner, model, fw, var, ver)


def _kaggle_handle(text: str, kid: KaggleId) -> Handle:
    canonical = "https://www.kaggle.com/" + kid.short_path()
    return Handle(text, "kaggle", canonical, canonical, True, kid)


def parse_handle(text: str) -> Handle:
    """Parse any accepted handle form; HandleError names what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise _bad(str(text), "it is empty")
    raw = text.strip()
    if "://" not in raw:
        segs = raw.strip("/").split("/")
        if len(segs) in (4, 5) and not raw.startswith(("/", ".")):
            if len(segs) == 4:
                raise _bad(raw, "a kagglehub handle needs a version: OWNER/MODEL/FRAMEWORK/VARIATION/N")
            return _kaggle_handle(raw, _kaggle_from_segments(raw, segs))
        raise _bad(raw, "it is neither a URL nor a kagglehub handle")
    try:
        parts = urllib.parse.urlsplit(raw)
        port = parts.port  # parsed here: a bad port raises ValueError too
    except ValueError as exc:  # e.g. "http://[::1/x", "http://h:99999/x", "http://\uff03h/x"
        raise _bad(raw, f"it is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise _bad(raw, f"scheme {parts.scheme!r} is not supported (use http or https)")
    host = (parts.hostname or "").lower()
    if not host:
        raise _bad(raw, "the URL has no host")
    segs = [s for s in parts.path.split("/") if s]
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k not in _DROP_QUERY]
    if host in _KAGGLE_HOSTS:
        if not segs or segs[0] != "models":
            raise _bad(raw, "Kaggle URLs must start with /models/")
        return _kaggle_handle(raw, _kaggle_from_segments(raw, segs[1:]))
    if host in _TFHUB_HOSTS or host == _CN_HOST:
        if len(segs) < 3 or not _VERSION.match(segs[-1]):
            raise _bad(raw, "a hub handle needs PUBLISHER/MODEL/VERSION with a numeric version")
        _check_segments(raw, segs)
        path = "/".join(segs)
        if host == _CN_HOST:
            canonical = f"https://{_CN_HOST}/{path}"
            return Handle(raw, "tfhub_cn", canonical, CN_DOWNLOAD.format(path=path), False)
        canonical = f"https://tfhub.dev/{path}"
        return Handle(raw, "tfhub", canonical, canonical, True)
    if parts.netloc.rpartition("@")[2].startswith("["):  # an IPv6 (or IPvFuture) literal keeps its brackets
        host = f"[{host}]"
    netloc = host + (f":{port}" if port else "")
    # spaces and control characters percent-encoded, as a browser would: parse_handle strips the
    # ends of what it is given, so a canonical "http://h/x " would name another model, "http://h/x"
    path = "/" + "".join(urllib.parse.quote(c) if c.isspace() or c < "!" else c for c in "/".join(segs))
    canonical = urllib.parse.urlunsplit(
        (parts.scheme, netloc, path, urllib.parse.urlencode(query), "")
    )
    if path == "/":
        raise _bad(raw, "the URL has no model path")
    return Handle(raw, "http", canonical, canonical, True)


def with_compressed_query(url: str) -> str:
    """``url`` with tf-hub-format=compressed merged into its query, as tensorflow_hub does."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query = [(k, v) for k, v in query if k != "tf-hub-format"] + [("tf-hub-format", "compressed")]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def learned_handle(url: str) -> Handle | None:
    """The Kaggle model handle behind a redirect target URL, if it is one."""
    try:
        handle = parse_handle(url)
    except HandleError:
        return None
    return handle if handle.kind == "kaggle" else None
