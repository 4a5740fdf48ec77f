"""Hostile model manifests, and a real HTTP server that plays a compromised upstream daemon.

Each case takes a genuine manifest document (as ``cachemgr`` wrote it) and changes one thing,
keeping everything else valid: the blobs it names exist and hash right, the digest matches
the canonical bytes. So each check is exercised on its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Doc = dict[str, Any]


def canonical(doc: Doc) -> bytes:
    """The bytes cachemgr names a manifest by (Manifest.to_bytes)."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def digest_of(doc: Doc) -> str:
    return hashlib.sha256(canonical(doc)).hexdigest()


def _root_entry(doc: Doc) -> list[Any]:
    return next(f for f in doc["files"] if f[0] == "saved_model.pb")


def _with_file(doc: Doc, path: str) -> Doc:
    out = copy.deepcopy(doc)
    entry = list(_root_entry(out))
    entry[0] = path
    out["files"].append(entry)
    return out


def traversal(target: Path) -> Callable[[Doc], Doc]:
    return lambda doc: _with_file(doc, "../" * 30 + str(target).lstrip("/"))


def absolute(target: Path) -> Callable[[Doc], Doc]:
    return lambda doc: _with_file(doc, str(target))


def file_and_dir(doc: Doc) -> Doc:
    return _with_file(doc, doc["dirs"][0])


def duplicate(doc: Doc) -> Doc:
    return _with_file(doc, "saved_model.pb")


def no_structure(doc: Doc) -> Doc:
    out = copy.deepcopy(doc)
    out["files"] = [f for f in out["files"] if f[0] != "saved_model.pb"]
    return out


def size_lie(doc: Doc) -> Doc:
    out = copy.deepcopy(doc)
    _root_entry(out)[2] += 1
    return out


def cases(target: Path) -> dict[str, tuple[Callable[[Doc], Doc], str]]:
    """Every hostile kind, with the words its refusal must contain."""
    return {
        "traversal": (traversal(target), "not a normal relative path"),
        "absolute": (absolute(target), "not a normal relative path"),
        "file-and-dir": (file_and_dir, "both a file and a directory"),
        "duplicate": (duplicate, "listed twice"),
        "no-structure": (no_structure, "no saved_model.pb"),
        "size-lie": (size_lie, "bytes"),
    }


class HostileUpstream:
    """A plain HTTP server on 127.0.0.1 that answers cachemgr's upstream API with ``doc``."""

    def __init__(self, doc: Doc, blobs: Path, handle: str) -> None:
        self.body = canonical(doc)
        self.digest = hashlib.sha256(self.body).hexdigest()
        self.blobs = blobs
        self.handle = handle
        self.requests: list[str] = []

    @contextmanager
    def running(self) -> Iterator[str]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                upstream.requests.append(self.path)
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/v1/refs":
                    body = json.dumps({"handle": upstream.handle, "manifest": upstream.digest,
                                       "aliases": [upstream.handle], "url": "http://evil/"}).encode()
                elif url.path == f"/v1/manifests/{upstream.digest}":
                    body = upstream.body
                elif url.path.startswith("/v1/blobs/"):
                    sha = url.path.rsplit("/", 1)[-1]
                    body = (upstream.blobs / sha[:2] / sha).read_bytes()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

        with serving(Handler) as base:
            yield base


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """A real threaded HTTP(S) server on 127.0.0.1 for ``handler``; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
