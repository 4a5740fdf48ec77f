"""A model's state in `ls`, `info` and `du` (and their --json): an out-of-service model looks
out of service everywhere, with the fix, and no command hands out the path of a missing snapshot."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.cli import Cli
from tests.support.lifecycle import MYMUL, TEXT1

FIX = f"out of service: run `cachemgr verify --repair` or `cachemgr pull --refresh {MYMUL}`"


def blob_of(cli: Cli, home: Path, handle: str, name: str) -> Path:
    digest = json.loads(cli("info", handle, "--json").out)["manifest"]
    doc = json.loads((home / "manifests" / "sha256" / f"{digest}.json").read_bytes())
    sha = str(next(f[3] for f in doc["files"] if f[0] == name))
    return home / "blobs" / "sha256" / sha[:2] / sha


def by_handle(doc: dict[str, list[dict[str, object]]]) -> dict[str, dict[str, object]]:
    return {str(m["handle"]): m for m in doc["models"]}


def test_a_quarantined_model_is_out_of_service_in_ls_info_and_du(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL, TEXT1).code == 0
    models = by_handle(json.loads(cli("ls", "--json").out))
    assert models[MYMUL]["state"] == "ok" and models[MYMUL]["fix"] == "" and Path(str(models[MYMUL]["path"])).is_dir()
    assert cli("ls").out.splitlines()[0].split() == ["HANDLE", "DIGEST", "SIZE", "ALIASES", "STATE"]

    blob = blob_of(cli, home, MYMUL, "saved_model.pb")
    os.chmod(blob, 0o644)
    blob.write_bytes(blob.read_bytes()[:-1] + b"!")
    assert cli("verify").code == 11  # quarantines the blob and takes mymul out of service

    models = by_handle(json.loads(cli("ls", "--json").out))
    assert models[MYMUL]["state"] == "out_of_service" and models[MYMUL]["path"] is None
    assert models[MYMUL]["fix"] == FIX
    assert models[TEXT1]["state"] == "ok" and Path(str(models[TEXT1]["path"])).is_dir()
    out = cli("ls").out.splitlines()
    row = next(x for x in out if x.startswith(MYMUL + " "))
    assert row.split()[-1] == "out_of_service", out
    assert f"{MYMUL}: {FIX}" in out and not any(x.startswith(f"{TEXT1}: ") for x in out), out

    info = json.loads(cli("info", MYMUL, "--json").out)
    assert info["state"] == "out_of_service" and info["path"] is None and info["fix"] == FIX
    text = cli("info", MYMUL).out.splitlines()
    assert "state:        out_of_service" in text and "path:         - (no snapshot)" in text, text
    assert f"fix:          {FIX}" in text, text
    assert "state:        ok" in cli("info", TEXT1).out.splitlines()

    du = by_handle(json.loads(cli("du", "--json").out))
    assert du[MYMUL]["state"] == "out_of_service" and du[MYMUL]["fix"] == FIX and du[TEXT1]["state"] == "ok"
    lines = cli("du").out.splitlines()
    assert lines[0].split()[-1] == "STATE" and f"{MYMUL}: {FIX}" in lines, lines

    assert cli("verify", "--repair").code == 12
    assert {m["state"] for m in json.loads(cli("ls", "--json").out)["models"]} == {"ok"}
    assert "fix:" not in cli("info", MYMUL).out


def test_missing_blobs_are_a_state_of_their_own(cli: Cli, home: Path) -> None:
    assert cli("pull", TEXT1).code == 0
    blob = blob_of(cli, home, TEXT1, "saved_model.pb")
    blob.unlink()  # the snapshot's hard link still serves the model
    info = json.loads(cli("info", TEXT1, "--json").out)
    assert info["state"] == "missing_blobs" and Path(info["path"]).is_dir()
    assert info["fix"].startswith("1 blob(s) missing (it still loads") and "cachemgr verify --repair" in info["fix"]
    assert by_handle(json.loads(cli("du", "--json").out))[TEXT1]["state"] == "missing_blobs"
    assert f"{TEXT1}: 1 blob(s) missing" in cli("ls").out
