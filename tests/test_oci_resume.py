"""Push and pull over the wire: a chunked upload survives a broken connection (a real registry
behind a proxy that cuts once), and the errors are one line each.

The model is a SavedModel-shaped tree (the structure check reads names only) with one 70 MiB
weight shard, more than one upload chunk (64 MiB), so the push goes by PATCH. The proxy drops
the connection 40 MiB into the first chunk; the push must resume (from the registry's
``Range``, or, as distribution 2.8 answers after a half-sent chunk, a fresh upload) and finish,
and what the registry then holds must pull back, verified, as the same model. Then the errors of push
and pull: one line each, with the fix and the documented exit code.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from tests.support.cli import Cli
from tests.support.cutting_proxy import CuttingProxy
from tests.support.env import BASE_ENV
from tests.support.registry import LocalRegistry

BIG = "https://tfhub.dev/test/big/1"


def test_a_broken_chunked_upload_resumes(tmp_path: Path) -> None:
    tree = tmp_path / "big"
    (tree / "variables").mkdir(parents=True)
    (tree / "saved_model.pb").write_bytes(os.urandom(1024))
    (tree / "variables/variables.index").write_bytes(os.urandom(256))
    (tree / "variables/variables.data-00000-of-00001").write_bytes(os.urandom(70 << 20))
    env = dict(BASE_ENV, CACHEMGR_RETRIES="3", CACHEMGR_BACKOFF="0.05", XDG_CONFIG_HOME=str(tmp_path / "xdg"),
               REGISTRY_AUTH_FILE=str(tmp_path / "none.json"))
    src = Cli(tmp_path / "src", env)
    r = src("add", BIG, str(tree))
    assert r.code == 0, r.err
    with LocalRegistry(tmp_path / "reg") as reg, CuttingProxy(reg.port, 40 << 20) as proxy:
        r = src("push", BIG, "--to", f"oci://127.0.0.1:{proxy.port}/r", "--json")
        assert r.code == 0, r.err
        report = json.loads(r.out)["results"][0]
        assert proxy.cuts == 1 and report["resumes"] >= 1 and report["uploaded"] == 3, report
        assert "broke" in r.err, r.err  # the step is logged (distribution 2.8 drops a half-sent chunk's upload)
        fresh = Cli(tmp_path / "fresh", env)
        r = fresh("pull", f"{reg.url('r')}/test/big:1", "--json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["results"][0]["manifest"] == json.loads(src("info", BIG, "--json").out)["manifest"]


def test_push_and_pull_errors_are_one_line_with_the_fix(tmp_path: Path) -> None:
    env = dict(BASE_ENV, CACHEMGR_RETRIES="0", XDG_CONFIG_HOME=str(tmp_path / "xdg"),
               REGISTRY_AUTH_FILE=str(tmp_path / "none.json"))
    tree = tmp_path / "m"
    (tree / "variables").mkdir(parents=True)
    for name in ("saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001"):
        (tree / name).write_bytes(os.urandom(64))
    cli = Cli(tmp_path / "home", env)
    assert cli("add", BIG, str(tree)).code == 0
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    cases = [
        (["push", BIG, "--to", f"oci://127.0.0.1:{dead}/p"], 7, "check that the registry is up"),
        (["push", "https://tfhub.dev/test/absent/1", "--to", f"oci://127.0.0.1:{dead}/p"], 5, "cachemgr pull"),
        (["push", BIG, "--to", "oci://127.0.0.1/Bad Prefix"], 2, "registry grammar"),
        (["push", BIG, "--to", "https://127.0.0.1/p"], 2, "oci://HOST"),
        (["pull", f"oci://127.0.0.1:{dead}/p/test/big:1"], 7, "check that the registry is up"),
        (["--offline", "pull", f"oci://127.0.0.1:{dead}/p/test/big:1"], 6, "offline mode is on"),
    ]
    for args, code, words in cases:
        r = cli(*args)
        assert r.code == code and words in r.err, (args, r.code, r.err)
        assert r.err.count("\n") == 1 and "Traceback" not in r.err, r.err
