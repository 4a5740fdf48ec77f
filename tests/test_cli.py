"""Inspecting commands, their --json output and exit codes."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tests.support.cli import Cli

TFHUB = "https://tfhub.dev/google/mymul/1"


def test_ls_info_path_json(cli: Cli, home: Path) -> None:
    # Nothing pulled yet: the home is not a store, which ls says rather than listing nothing
    # (an empty store lists nothing: test_cli_home.py).
    r = cli("ls", "--json")
    assert r.code == 2 and json.loads(r.out)["error"]["type"] == "no_store"
    assert cli("pull", TFHUB, "https://tfhub.dev/google/text-embed/1").code == 0
    models = json.loads(cli("ls", "--json").out)["models"]
    assert [m["handle"] for m in models] == sorted([TFHUB, "https://tfhub.dev/google/text-embed/1"])
    for m in models:
        assert Path(m["path"]).is_dir() and m["size"] > 0 and m["aliases"]
    table = cli("ls").out.splitlines()
    assert table[0].split() == ["HANDLE", "DIGEST", "SIZE", "ALIASES", "STATE"] and len(table) == 3

    info = json.loads(cli("info", TFHUB + "/", "--json").out)
    assert info["handle"] == TFHUB and info["asked"] == TFHUB and info["source"] == "pull"
    assert info["url"].startswith("https://storage.googleapis.com/")
    assert info["fetched_at"] > 0 and info["size"] == sum(
        p.stat().st_size for p in Path(info["path"]).rglob("*") if p.is_file())
    text = cli("info", TFHUB).out
    assert "manifest:" in text and "aliases:" in text

    p = json.loads(cli("path", TFHUB, "--json").out)
    assert p["path"] == info["path"] and p["manifest"] == info["manifest"]


def test_missing_model_exits_5(cli: Cli) -> None:
    assert cli("pull", TFHUB).code == 0  # a store, without the model asked for
    r = cli("path", "https://tfhub.dev/google/absent/1")
    assert r.code == 5 and "cachemgr pull https://tfhub.dev/google/absent/1" in r.err
    r = cli("info", "https://tfhub.dev/google/absent/1", "--json")
    assert r.code == 5 and json.loads(r.out)["error"]["type"] == "not_cached"


def test_bad_handle_exits_4(cli: Cli) -> None:
    r = cli("pull", "ftp://x/y/1")
    assert r.code == 4 and "invalid handle" in r.err


def test_env_is_evaluable(cli: Cli, tmp_path: Path) -> None:
    cache = tmp_path / "xdg cache"  # the default home, made on first use; quoted for the shell
    lines = cli("env", env={"CACHEMGR_HOME": "", "XDG_CACHE_HOME": str(cache)}).out.splitlines()
    assert lines[0] == f"export TFHUB_CACHE_DIR={shlex.quote(str(cache / 'cachemgr' / 'view'))}"
    assert (cache / "cachemgr" / "view").is_dir()


def test_newer_store_format_is_refused(cli: Cli, home: Path) -> None:
    assert cli("pull", TFHUB).code == 0
    (home / "store-format").write_text('{"format": 99}\n')
    r = cli("ls")
    assert r.code == 10 and "newer than this cachemgr" in r.err and "upgrade" in r.err
    r = cli("pull", TFHUB)
    assert r.code == 10


def test_progress_bar_on_a_tty_and_not_otherwise(cli: Cli, home: Path) -> None:
    import shutil
    import subprocess

    script = shutil.which("script")
    assert script, "script(1) from util-linux/bsdutils is required"
    env = {**cli.env, "CACHEMGR_HOME": str(home)}
    cmd = f"{shlex.quote(__import__('sys').executable)} -m cachemgr pull {TFHUB}"
    tty = subprocess.run([script, "-qec", cmd, "/dev/null"], env=env, capture_output=True, text=True, timeout=120)
    assert tty.returncode == 0, tty.stdout
    assert "100%|" in tty.stdout and "/s]" in tty.stdout, tty.stdout[-500:]
    piped = cli("pull", "https://tfhub.dev/google/text-embed/1")
    assert piped.code == 0 and "%|" not in piped.err
