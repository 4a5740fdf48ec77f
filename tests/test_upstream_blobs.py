"""An upstream's blob bodies (cachemgr/fetch/receive.py): every way one can arrive wrong, and a proxy.

The upstream is a real HTTP server on 127.0.0.1 answering cachemgr's upstream API with mymul's
genuine manifest and blobs, each blob's body altered as a test says; the node is a real
``cachemgr pull`` child with that server as its upstream. The proxy is a real forwarding HTTP
proxy on 127.0.0.1 that wants credentials.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import trustme

from tests.support import hostile
from tests.support.cli import Cli
from tests.support.suite import Models

SEED = "https://tfhub.dev/google/seed/1"
HANDLE = "https://tfhub.dev/up/m/1"
# A blob's body as served: (genuine bytes, how many times it was asked for) -> bytes sent, and
# the Content-Length to announce (None: the body's own length).
Alter = Callable[[bytes, int], tuple[bytes, int | None]]


class Upstream:
    """cachemgr's upstream API for one model; ``alter`` shapes the biggest blob's body."""

    def __init__(self, doc: hostile.Doc, blobs: Path, alter: Alter) -> None:
        self.body = hostile.canonical(doc)
        self.digest = hashlib.sha256(self.body).hexdigest()
        self.blobs = blobs
        self.big = max(doc["files"], key=lambda f: f[2])[3]
        self.blob_count = len({f[3] for f in doc["files"]})
        self.alter = alter
        self.blob_requests: list[dict[str, str]] = []  # the big blob's request headers, in order
        self.refs_asked = 0

    @contextmanager
    def running(self, tls: ssl.SSLContext | None = None) -> Iterator[str]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = urllib.parse.urlsplit(self.path).path
                length: int | None = None
                if path == "/v1/refs":
                    upstream.refs_asked += 1
                    body = json.dumps({"manifest": upstream.digest, "aliases": [HANDLE], "url": ""}).encode()
                elif path == f"/v1/manifests/{upstream.digest}":
                    body = upstream.body
                elif path.startswith("/v1/blobs/"):
                    sha = path.rsplit("/", 1)[-1]
                    body = (upstream.blobs / sha[:2] / sha).read_bytes()
                    if sha == upstream.big:
                        upstream.blob_requests.append(dict(self.headers))
                        body, length = upstream.alter(body, len(upstream.blob_requests))
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

        with hostile.serving(Handler, tls) as base:
            yield base


class Proxy:
    """A forwarding HTTP proxy (absolute-URI GETs, CONNECT tunnels) that answers 407 without ``user:secret``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []  # (URL, Proxy-Authorization)

    @contextmanager
    def running(self) -> Iterator[str]:
        proxy = self
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def allowed(self) -> bool:
                auth = self.headers.get("Proxy-Authorization")
                proxy.seen.append((f"{self.command} {self.path}", auth))
                if auth != "Basic " + base64.b64encode(b"user:secret").decode():
                    self.send_error(407)
                    return False
                return True

            def do_CONNECT(self) -> None:  # noqa: N802 - http.server's name
                if not self.allowed():
                    return
                host, _, port = self.path.rpartition(":")
                with socket.create_connection((host, int(port))) as far:
                    self.send_response(200)
                    self.end_headers()
                    pump = threading.Thread(target=_relay, args=(far, self.connection), daemon=True)
                    pump.start()
                    _relay(self.connection, far)
                    pump.join(10)
                self.close_connection = True

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if not self.allowed():
                    return
                up = direct.open(urllib.request.Request(self.path, headers={"Accept-Encoding": "identity"}))
                with up:
                    body = up.read()
                self.send_response(200)
                self.send_header("Content-Type", up.headers.get("Content-Type", "application/octet-stream"))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        with hostile.serving(Handler) as base:
            yield base


def _relay(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def setup(cli: Cli, models: Models, tmp_path: Path, alter: Alter) -> tuple[Upstream, Cli]:
    """The upstream serving mymul (from ``cli``'s store) and an empty victim store."""
    assert cli("add", SEED, str(models.mymul)).code == 0
    info = json.loads(cli("info", SEED, "--json").out)
    doc: hostile.Doc = json.loads((cli.home / "manifests" / "sha256" / f"{info['manifest']}.json").read_bytes())
    return Upstream(doc, cli.home / "blobs" / "sha256", alter), Cli(tmp_path / "victim", cli.env)


def nothing_left(victim: Cli, big: str) -> None:
    tmp = victim.home / "tmp"
    assert not tmp.is_dir() or sorted(os.listdir(tmp)) == [], f"temps left behind: {os.listdir(tmp)}"
    assert not list((victim.home / "blobs").rglob(big)), "a bad blob was adopted"
    assert victim("path", HANDLE).code != 0


def test_a_corrupt_blob_is_asked_for_again_with_no_cache_and_then_adopted(cli: Cli, models: Models,
                                                                         tmp_path: Path) -> None:
    def flip_first(body: bytes, n: int) -> tuple[bytes, int | None]:
        return (bytes([body[0] ^ 1]) + body[1:], None) if n == 1 else (body, None)

    upstream, victim = setup(cli, models, tmp_path, flip_first)
    with upstream.running() as base:
        r = victim("pull", HANDLE, env={"CACHEMGR_UPSTREAMS": base})
    assert r.code == 0, r.err
    assert [h.get("Cache-Control") for h in upstream.blob_requests] == [None, "no-cache"], upstream.blob_requests
    assert "arrived corrupt" in r.err, r.err
    v = victim("verify")
    assert v.code == 0, v.out + v.err


def test_a_blob_longer_than_its_manifest_says_is_refused(cli: Cli, models: Models, tmp_path: Path) -> None:
    upstream, victim = setup(cli, models, tmp_path, lambda body, n: (body + b"x" * 5000, None))
    with upstream.running() as base:
        r = victim("pull", HANDLE, env={"CACHEMGR_UPSTREAMS": base})
    assert r.code != 0, r.out
    assert len(upstream.blob_requests) == 2, upstream.blob_requests  # once more with no-cache, then refused
    assert "arrived with more than" in r.err and f"upstream {base} failed for {HANDLE}" in r.err, r.err
    assert "Traceback" not in r.err, r.err
    nothing_left(victim, upstream.big)


def test_a_body_cut_short_is_a_failed_upstream(cli: Cli, models: Models, tmp_path: Path) -> None:
    # Content-Length promises the whole blob; half comes, then the connection closes.
    upstream, victim = setup(cli, models, tmp_path, lambda body, n: (body[:len(body) // 2], len(body)))
    with upstream.running() as base:
        r = victim("pull", HANDLE, env={"CACHEMGR_UPSTREAMS": base})
    assert r.code != 0, r.out
    assert "broke off" in r.err and f"upstream {base} failed for {HANDLE}" in r.err, r.err
    assert "Traceback" not in r.err, r.err
    nothing_left(victim, upstream.big)


def test_blobs_go_through_the_proxy_with_its_credentials(cli: Cli, models: Models, tmp_path: Path) -> None:
    upstream, victim = setup(cli, models, tmp_path, lambda body, n: (body, None))
    proxy = Proxy()
    with upstream.running() as base, proxy.running() as proxy_url:
        with_auth = proxy_url.replace("http://", "http://user:secret@")
        r = victim("pull", HANDLE, env={"CACHEMGR_UPSTREAMS": base, "CACHEMGR_PROXY": with_auth})
    assert r.code == 0, r.err
    blobs = [(url, auth) for url, auth in proxy.seen if "/v1/blobs/" in url]
    assert f"GET {base}/v1/blobs/{upstream.big}" in [url for url, _ in blobs], proxy.seen
    assert all(auth is not None for _, auth in blobs), proxy.seen
    assert len(upstream.blob_requests) == 1
    v = victim("verify")
    assert v.code == 0, v.out + v.err


def test_an_https_upstream_with_the_ca_bundle_through_the_proxy_s_tunnel(cli: Cli, models: Models,
                                                                         tmp_path: Path) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    upstream, victim = setup(cli, models, tmp_path, lambda body, n: (body, None))
    proxy = Proxy()
    with upstream.running(server_tls) as base, proxy.running() as proxy_url:
        env = {"CACHEMGR_UPSTREAMS": base, "CACHEMGR_PROXY": proxy_url.replace("http://", "http://user:secret@")}
        untrusted = victim("pull", HANDLE, env=env)
        assert untrusted.code != 0 and "certificate" in untrusted.err.lower(), untrusted.err
        before = len(proxy.seen)
        r = victim("pull", HANDLE, env={**env, "CACHEMGR_CA_BUNDLE": str(ca_file)})
    assert r.code == 0, r.err
    tunnels = [seen for seen in proxy.seen[before:] if seen[0] == f"CONNECT {base.removeprefix('https://')}"]
    # One tunnel per blob (each its own connection), besides the one of the refs and the manifest.
    assert len(tunnels) > upstream.blob_count and all(auth is not None for _, auth in tunnels), proxy.seen
    assert len(upstream.blob_requests) == 1, upstream.blob_requests
    v = victim("verify")
    assert v.code == 0, v.out + v.err


def test_an_upstream_no_proxy_names_is_reached_direct_whatever_http_proxy_says(cli: Cli, models: Models,
                                                                              tmp_path: Path) -> None:
    """CACHEMGR_NO_PROXY sends the upstream direct: refs, manifest and blobs alike, though the
    environment's HTTP_PROXY (a port nobody listens on) would refuse every request."""
    upstream, victim = setup(cli, models, tmp_path, lambda body, n: (body, None))
    dead = f"http://127.0.0.1:{_dead_port()}"
    with upstream.running() as base:
        r = victim("pull", HANDLE, env={"CACHEMGR_UPSTREAMS": base, "HTTP_PROXY": dead, "http_proxy": dead,
                                        "CACHEMGR_NO_PROXY": "127.0.0.1", "NO_PROXY": "", "no_proxy": ""})
    assert r.code == 0, r.err
    assert len(upstream.blob_requests) == 1 and upstream.refs_asked >= 1
    v = victim("verify")
    assert v.code == 0, v.out + v.err


def _dead_port() -> int:
    with socket.socket() as s:  # bound and closed: nothing listens there now
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
