"""The client's offline switch reaches the daemon (issue 13): a shim process with CACHEMGR_OFFLINE=1
gets an offline answer for a miss from an online daemon, which fetches nothing; without the switch
the same miss is fetched. An offline client never falls back to tensorflow_hub's own download."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Cli
from tests.support.daemons import Daemon, run_job
from tests.support.origin import FakeOrigin

TFHUB = "https://tfhub.dev/google/mymul/1"


@pytest.fixture
def daemon(cli: Cli, home: Path) -> Iterator[Daemon]:
    d = Daemon(home, cli.env)  # online: CACHEMGR_OFFLINE is not set for the daemon
    try:
        yield d.wait_ready()
    finally:
        d.stop(signal.SIGKILL)


def test_an_offline_client_gets_an_offline_answer_and_nothing_is_fetched(
        origin: FakeOrigin, home: Path, daemon: Daemon) -> None:
    env = {"CACHEMGR_SOCKET": str(daemon.sock), "TFHUB_CACHE_DIR": str(home / "view")}
    out, _ = run_job("offline_miss", TFHUB, env={**env, "CACHEMGR_OFFLINE": "1"})
    error = out["error"]
    assert isinstance(error, str) and "CachemgrResolveError" in error, out
    assert TFHUB in error and "offline" in error and "CACHEMGR_OFFLINE" in error, error
    assert origin.requests == [], origin.requests  # the daemon asked the origin nothing
    status = daemon.call("GET", "/v1/status")[1]
    assert status["fetches"] == 0 and not status["offline"], status

    out, _ = run_job("resolve", TFHUB, env=env)  # the same miss from a client that is online
    assert out["paths"] == [str(home / "view" / __import__("hashlib").sha1(TFHUB.encode()).hexdigest())]
    assert origin.completed("gcs") == 1
    assert daemon.call("GET", "/v1/status")[1]["fetches"] == 1


def test_the_offline_flag_of_the_resolve_api(origin: FakeOrigin, daemon: Daemon) -> None:
    status, doc = daemon.call("POST", "/v1/resolve", {"handle": TFHUB, "offline": True})
    assert status == 404 and doc["error"]["type"] == "offline_miss", doc
    assert "this client is offline" in doc["error"]["message"] and TFHUB in doc["error"]["message"]
    status, doc = daemon.call("POST", "/v1/resolve", {"handle": TFHUB, "offline": "yes"})
    assert status == 400 and "offline" in doc["error"]["message"], doc
    assert origin.requests == []
    status, doc = daemon.call("POST", "/v1/resolve", {"handle": TFHUB, "offline": False})
    assert status == 200 and doc["fetched"], doc
    status, doc = daemon.call("POST", "/v1/resolve", {"handle": TFHUB, "offline": True})
    assert status == 200 and not doc["fetched"], doc  # a hit is an answer offline too


def test_an_offline_client_without_a_daemon_does_not_download(origin: FakeOrigin, tmp_path: Path) -> None:
    url = origin.hosting_url("google", "mymul", 1)
    env = {"CACHEMGR_SOCKET": str(tmp_path / "nobody.sock"), "TFHUB_CACHE_DIR": str(tmp_path / "hubcache"),
           "CACHEMGR_OFFLINE": "1"}
    out, _ = run_job("offline_miss", url, env=env)
    error = out["error"]
    assert isinstance(error, str) and "CachemgrResolveError" in error and "unreachable" in error, out
    assert "CACHEMGR_OFFLINE" in error and url in error, error
    assert origin.requests == [], origin.requests
