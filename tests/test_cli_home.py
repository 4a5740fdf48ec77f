"""A typo'd --home: every command that only reads a store says so the same way (one line, exit 2,
nothing made); only the commands that fill a store make one, and `env` only the default home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import Cli
from tests.support.lifecycle import MYMUL
from tests.support.suite import Archives

READERS = [
    ["ls"], ["ls", "--json"], ["info", MYMUL], ["path", MYMUL], ["du"], ["verify"], ["verify", MYMUL],
    ["pins"], ["pins", "--check"], ["prune", "--dry-run"], ["unpin", MYMUL], ["rm", MYMUL],
    ["inventory", "-o", "@have.json"], ["export", MYMUL, "-o", "@x.tar.zst"], ["env"],
]


@pytest.mark.parametrize("args", READERS, ids=[" ".join(a) for a in READERS])
def test_every_reader_refuses_a_home_that_is_not_a_store(cli: Cli, tmp_path: Path, args: list[str]) -> None:
    typo = tmp_path / "typo"
    args = [a.replace("@", f"{tmp_path}/") for a in args]  # outputs go to this test's directory
    r = cli("--home", str(typo), *args)
    assert r.code == 2, (r.code, r.out, r.err)
    message = (f"{typo} is not a cachemgr store; check --home / CACHEMGR_HOME, or fill it first with "
               "`cachemgr pull` or `cachemgr import`")
    if "--json" in args:
        assert json.loads(r.out)["error"] == {"type": "no_store", "message": message, "exit_code": 2}
    else:
        assert r.err.strip() == f"cachemgr: error: {message}" and r.out == "", r.err
    assert not typo.exists(), "a command that only reads made the store"
    assert not (tmp_path / "have.json").exists() and not (tmp_path / "x.tar.zst").exists()


def test_the_commands_that_fill_a_store_make_it(cli: Cli, tmp_path: Path, archives: Archives) -> None:
    offline = {"CACHEMGR_OFFLINE": "1"}
    archive = tmp_path / "mymul.tar.gz"
    archive.write_bytes(archives.mymul)
    made = tmp_path / "by-add"
    assert cli("--home", str(made), "add", MYMUL, str(archive)).code == 0 and (made / "store-format").is_file()
    made = tmp_path / "by-pin"
    assert cli("--home", str(made), "pin", MYMUL, env=offline).code == 0  # wanted-but-missing
    assert (made / "store-format").is_file()
    made = tmp_path / "by-pull"
    assert cli("--home", str(made), "pull", MYMUL).code == 0 and (made / "store-format").is_file()
    bundle = tmp_path / "b.tar.zst"
    assert cli("--home", str(made), "export", MYMUL, "-o", str(bundle)).code == 0
    into = tmp_path / "by-import"
    assert cli("--home", str(into), "import", str(bundle)).code == 0 and (into / "store-format").is_file()


def test_env_makes_only_the_default_home_and_an_empty_store_lists_nothing(cli: Cli, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    default = {"CACHEMGR_HOME": "", "XDG_CACHE_HOME": str(cache)}
    r = cli("env", env=default)
    assert r.code == 0 and (cache / "cachemgr" / "store-format").is_file(), r.err
    assert json.loads(cli("ls", "--json", env=default).out) == {"models": []}
    assert cli("ls", env=default).out.split() == ["HANDLE", "DIGEST", "SIZE", "ALIASES", "STATE"]
    r = cli("--home", str(tmp_path / "elsewhere"), "env", env=default)
    assert r.code == 2 and "is not a cachemgr store" in r.err and not (tmp_path / "elsewhere").exists()
