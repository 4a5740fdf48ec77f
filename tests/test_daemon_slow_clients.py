"""A slow or hostile client of the daemon (issue 10): on TCP, a request head that drips in, or a body
that never ends, is cut off after ``client_timeout``; a peer holding ``max_peer_connections``
connections has its next ones refused; a normal client's hit is answered all the while."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

from tests.support.cli import Cli
from tests.support.daemons import Daemon, free_port

TFHUB = "https://tfhub.dev/google/mymul/1"
MIRROR_PATH = "/google/mymul/1?tf-hub-format=compressed"
GIVE_UP = 60.0  # seconds after which a connection the daemon should have cut counts as held (the test fails)




def start(daemons: list[Daemon], cli: Cli, home: Path, **env: str) -> tuple[Daemon, int]:
    assert cli("pull", TFHUB).code == 0
    for attempt in range(3):  # the free port may be taken by another test's process before the daemon binds it
        port = free_port()
        d = Daemon(home, {**cli.env, **env}, listen=f"127.0.0.1:{port}")
        daemons.append(d)
        try:
            return d.wait_ready(), port
        except AssertionError as exc:
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def hit(port: int, source: str = "127.0.0.1") -> bytes:
    """A normal client: a mirror download of the cached model, from ``source``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", MIRROR_PATH)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200 and b"saved_model.pb" in body, (resp.status, body[:300])
    return body


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the daemon sends until it closes the connection; AssertionError if it never does."""
    sock.settimeout(0.5)
    data = b""
    deadline = time.monotonic() + GIVE_UP
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the daemon kept the connection open; it sent {data[:300]!r}")


def test_a_dripping_request_head_is_cut_off(cli: Cli, home: Path, daemons: list[Daemon]) -> None:
    d, port = start(daemons, cli, home, CACHEMGR_CLIENT_TIMEOUT="1s", CACHEMGR_WORKERS="2")
    loris = socket.create_connection(("127.0.0.1", port))
    try:
        loris.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        loris.settimeout(0.2)
        closed = False
        deadline = time.monotonic() + GIVE_UP
        checked = False
        while not closed and time.monotonic() < deadline:
            try:
                loris.send(b"X")  # one byte of a header line that never ends
                closed = loris.recv(1024) == b""
            except TimeoutError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            if not checked:
                hit(port)  # another client is answered while the slow one drips
                checked = True
        assert closed, "a client dripping its request head was never cut off"
    finally:
        loris.close()
    hit(port)
    assert d.proc.poll() is None


def test_a_half_sent_body_is_answered_408_and_closed(cli: Cli, home: Path, daemons: list[Daemon]) -> None:
    d, port = start(daemons, cli, home, CACHEMGR_CLIENT_TIMEOUT="1s", CACHEMGR_WORKERS="1")
    with socket.create_connection(("127.0.0.1", port)) as half:
        half.sendall(b"POST /v1/resolve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"handle\": ")
        hit(port)
        answer = read_until_closed(half)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:300]
    error = json.loads(body)["error"]
    assert error["type"] == "client_timeout" and "client_timeout" in error["message"], error
    hit(port)


def test_connections_over_the_per_peer_cap_are_refused(cli: Cli, home: Path, daemons: list[Daemon]) -> None:
    cap = 4
    d, port = start(daemons, cli, home, CACHEMGR_MAX_PEER_CONNECTIONS=str(cap), CACHEMGR_WORKERS="1",
                    CACHEMGR_CLIENT_TIMEOUT="10m")
    held = []
    try:
        for _ in range(cap):  # each answered once (so the daemon has surely accepted it), then held idle
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/v1/health")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read()
            held.append(conn)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as extra:
                extra.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = read_until_closed(extra)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 429 "), answer[:300]
            error = json.loads(body)["error"]
            assert error["type"] == "too_many_connections" and "max_peer_connections" in error["message"]
        hit(port, source="127.0.0.2")  # another peer is served while this one is at its cap
        for conn in held:  # the held connections still work
            conn.request("GET", "/v1/health")
            assert conn.getresponse().read()
    finally:
        for conn in held:
            conn.close()
    # Once they are closed, the peer is served again (the daemon sees the close asynchronously).
    deadline = time.monotonic() + GIVE_UP
    while True:
        try:
            hit(port)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    d.stop()
    assert "refused 1 connection(s) from 127.0.0.1" in d.output(), d.output()
