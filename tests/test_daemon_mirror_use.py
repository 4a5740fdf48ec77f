"""Every way a model is served counts as use: a mirror tar and a ref served to another daemon
record a last use (so prune keeps the model) and count as hits in the daemon's status."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Cli
from tests.support.daemons import Daemon, free_port, http

TFHUB = "https://tfhub.dev/google/mymul/1"


@pytest.fixture
def daemon(cli: Cli, home: Path) -> Iterator[Daemon]:
    assert cli("pull", TFHUB).code == 0
    # Make the model old: pulled a day ago and never used since.
    (ref_path,) = (home / "refs").glob("*.json")
    doc = json.loads(ref_path.read_text())
    doc["fetched_at"] = time.time() - 86400
    ref_path.write_text(json.dumps(doc))
    os.utime(ref_path, (time.time() - 86400,) * 2)
    d = Daemon(home, cli.env, listen=f"127.0.0.1:{free_port()}")
    try:
        yield d.wait_ready()
    finally:
        d.stop(signal.SIGKILL)


def _evicted(cli: Cli) -> list[str]:
    r = cli("prune", "--dry-run", "--unused-for", "1h", "--grace", "0s", "--json")
    assert r.code == 0, r.err
    return [e["handle"] for e in json.loads(r.out)["plan"]["evict"]]


def test_a_mirror_download_counts_as_use_and_as_a_hit(cli: Cli, daemon: Daemon) -> None:
    assert _evicted(cli) == [TFHUB]  # old and unused: the plan would evict it
    hits = daemon.call("GET", "/v1/status")[1]["hits"]
    code, body = http("GET", f"{daemon.base}/google/mymul/1?tf-hub-format=compressed")
    assert code == 200 and b"saved_model.pb" in body
    assert _evicted(cli) == []
    (model,) = json.loads(cli("du", "--json").out)["models"]
    assert model["last_use"] is not None
    assert daemon.call("GET", "/v1/status")[1]["hits"] == hits + 1


def test_a_ref_served_to_another_daemon_counts_as_use(cli: Cli, daemon: Daemon) -> None:
    assert _evicted(cli) == [TFHUB]
    code, _ = http("GET", f"{daemon.base}/v1/refs?handle={TFHUB}")
    assert code == 200
    assert _evicted(cli) == []
