"""What an operator reads: problems name the models they affect, sizes print one way, handles are
parsed before anything else (so a typo is 'invalid handle', not 'not in the store')."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.cli import Cli
from tests.support.lifecycle import MYMUL


def test_a_corrupt_blob_names_the_models_it_takes_out_of_service(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL).code == 0
    digest = json.loads(cli("info", MYMUL, "--json").out)["manifest"]
    doc = json.loads((home / "manifests" / "sha256" / f"{digest}.json").read_bytes())
    sha = next(f[3] for f in doc["files"] if f[0] == "saved_model.pb")
    blob = home / "blobs" / "sha256" / sha[:2] / sha
    os.chmod(blob, 0o644)
    blob.write_bytes(blob.read_bytes()[:-1] + b"!")
    r = cli("verify")
    assert r.code == 11
    line = next(x for x in r.out.splitlines() if x.startswith("blob_corrupt"))
    assert f"{MYMUL} taken out of service" in line and f"affects: {MYMUL}" in line, r.out
    assert "1 blob " not in r.out and "problem(s)" not in r.err and "1 problem found" in r.err, r.out + r.err


def test_sizes_print_one_human_way_and_exact_bytes_in_json(cli: Cli) -> None:
    assert cli("pull", MYMUL).code == 0
    doc = json.loads(cli("info", MYMUL, "--json").out)
    assert isinstance(doc["size"], int) and doc["size"] > 1024
    text = cli("info", MYMUL).out
    size_line = next(x for x in text.splitlines() if x.startswith("size:"))
    assert "KiB" in size_line and str(doc["size"]) not in size_line, text
    verified = cli("verify").out.splitlines()[-1]
    assert verified.startswith("verified ") and "bytes" not in verified and "/s)" in verified, verified
    assert "KiB" in verified and "(s)" not in verified, verified


def test_every_command_that_takes_a_handle_parses_it_first(cli: Cli) -> None:
    assert cli("pull", MYMUL).code == 0
    for args in (["info", "bad handle"], ["path", "ftp://example.com/x/1"], ["verify", "bad handle"]):
        r = cli(*args)
        lines = r.err.strip().splitlines()
        assert r.code == 4 and len(lines) == 1 and "invalid handle" in lines[0], (args, r.err)
        assert "not in the store" not in r.err
    r = cli("info", "https://tfhub.dev/google/not-here/1")
    assert r.code == 5 and "cachemgr pull https://tfhub.dev/google/not-here/1" in r.err
    r = cli("info", "https://example.com/a/b/1?x=1&y=2")  # the suggested command is quoted for the shell
    assert r.code == 5 and "run `cachemgr pull 'https://example.com/a/b/1?x=1&y=2'`" in r.err, r.err
