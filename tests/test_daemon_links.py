"""The daemon never serves a byte from outside the store, whatever links the store holds.

A shared store can be written by another host (or user): here a blob, a manifest and a
snapshot file are each replaced by a symlink to a secret file outside the store. The blob and
manifest APIs answer 404 and the mirror tar stream stops before the file; the secret's bytes
never go out.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Cli
from tests.support.daemons import Daemon, free_port

TFHUB = "https://tfhub.dev/google/mymul/1"
SECRET = b"SECRET-outside-the-store\n"


def fetch(url: str) -> tuple[int, bytes]:
    """Status and body; a stream the server cut short counts with the bytes that did arrive."""
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            try:
                return resp.status, resp.read()
            except http.client.IncompleteRead as cut:
                return resp.status, cut.partial
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def daemon(cli: Cli, home: Path) -> Iterator[Daemon]:
    assert cli("pull", TFHUB).code == 0
    d = Daemon(home, cli.env, listen=f"127.0.0.1:{free_port()}")
    try:
        yield d.wait_ready()
    finally:
        d.stop(signal.SIGKILL)


def _model(cli: Cli) -> tuple[str, dict[str, Any]]:
    info = json.loads(cli("info", TFHUB, "--json").out)
    digest = str(info["manifest"])
    doc = json.loads((cli.home / "manifests" / "sha256" / f"{digest}.json").read_bytes())
    return digest, doc


def _swap_for_link(path: Path, secret: Path) -> None:
    os.chmod(path.parent, 0o755)
    path.unlink()
    path.symlink_to(secret)


def test_links_planted_in_the_store_are_never_followed(cli: Cli, daemon: Daemon, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    digest, doc = _model(cli)
    files = {str(f[0]): (int(f[2]), str(f[3])) for f in doc["files"]}
    _size, sha = files["saved_model.pb"]
    snapshot_file = cli.home / "snapshots" / digest / "saved_model.pb"
    pb = snapshot_file.read_bytes()
    # Before: all three are served.
    assert fetch(f"{daemon.base}/v1/blobs/{sha}")[0] == 200
    assert fetch(f"{daemon.base}/v1/manifests/{digest}")[0] == 200
    code, whole = fetch(f"{daemon.base}/google/mymul/1?tf-hub-format=compressed")
    assert code == 200 and b"saved_model.pb" in whole

    blob = cli.home / "blobs" / "sha256" / sha[:2] / sha
    _swap_for_link(blob, secret)
    code, body = fetch(f"{daemon.base}/v1/blobs/{sha}")
    assert code == 404 and SECRET not in body

    manifest = cli.home / "manifests" / "sha256" / f"{digest}.json"
    kept = manifest.read_bytes()
    _swap_for_link(manifest, secret)
    code, body = fetch(f"{daemon.base}/v1/manifests/{digest}")
    assert code == 404 and SECRET not in body
    manifest.unlink()
    manifest.write_bytes(kept)

    _swap_for_link(snapshot_file, secret)
    code, body = fetch(f"{daemon.base}/google/mymul/1?tf-hub-format=compressed")
    assert SECRET not in body and len(body) < len(whole), "the tar stream went on past the planted link"
    # A directory link on the way is refused too, not just the last component.
    snapshot_file.unlink()
    variables = cli.home / "snapshots" / digest / "variables"
    os.chmod(variables.parent, 0o755)
    (tmp_path / "fake-variables").mkdir()
    for name in os.listdir(variables):
        (tmp_path / "fake-variables" / name).write_bytes(SECRET)
    os.rename(variables, tmp_path / "real-variables")
    variables.symlink_to(tmp_path / "fake-variables")
    snapshot_file.write_bytes(pb)  # the stream now gets past saved_model.pb, to variables/
    code, body = fetch(f"{daemon.base}/google/mymul/1?tf-hub-format=compressed")
    assert SECRET not in body and len(body) < len(whole)
