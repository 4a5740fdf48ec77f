"""Bad input through the real CLI: one line on stderr that names the thing and the fix, one exit code.

Option values and click's own usage errors share one style and exit 2; a missing store is the
same error for every command that reads one; an OS error is one line; ``--debug`` shows the
traceback that is otherwise never shown.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import Cli

TFHUB = "https://tfhub.dev/google/mymul/1"


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("args", "needle"), [
    (["prune", "--max-size", "10XB"], "'10XB' is not a size"),
    (["prune", "--keep-versions", "0"], "--keep-versions"),
    (["prune", "--grace", "soon"], "--grace"),
    (["verify", "--max-duration", "-"], "--max-duration"),
    (["export", TFHUB, "-o", "b.tar.zst", "--split-size", "2K"], "use at least 4K"),
    (["export", TFHUB], "Missing option"),
    (["pul", TFHUB], "No such command"),
])
def test_bad_option_values_are_one_usage_line(cli: Cli, args: list[str], needle: str) -> None:
    assert cli("pull", TFHUB).code == 0
    r = cli(*args)
    line = one_line(r.err)
    assert r.code == 2 and line.startswith("cachemgr: error: ") and needle in line, (r.code, r.err)
    assert "--help" in line or "use at least" in line  # says where to look, or the fix itself


@pytest.mark.parametrize("args", [["du"], ["verify"], ["prune", "--dry-run"], ["pins"], ["unpin", TFHUB],
                                  ["export", TFHUB, "-o", "x.tar.zst"]])
def test_a_missing_store_is_one_error_for_every_reader(cli: Cli, tmp_path: Path, args: list[str]) -> None:
    typo = tmp_path / "typo"
    r = cli("--home", str(typo), *args)
    line = one_line(r.err)
    assert r.code == 2 and f"{typo} is not a cachemgr store" in line and "--home" in line, r.err
    assert not typo.exists(), "a command that only reads made the store"


def test_a_missing_input_file_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    r = cli("add", TFHUB, str(tmp_path / "nope.tar.gz"))
    assert r.code == 2 and "does not exist" in one_line(r.err)
    r = cli("import", str(tmp_path / "nope.tar.zst"))
    assert r.code == 2 and "nope.tar.zst does not exist" in one_line(r.err)
    r = cli("import", str(tmp_path / "nope.tar.zst.part*"))
    assert r.code == 2 and "no file matches" in one_line(r.err)


def test_os_errors_are_one_line_and_debug_shows_the_traceback(cli: Cli, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    r = cli("--home", str(blocker / "store"), "pull", TFHUB)
    line = one_line(r.err)
    assert r.code == 10 and str(blocker / "store") in line, r.err
    r = cli("--debug", "--home", str(blocker / "store"), "pull", TFHUB)
    assert r.code != 0 and "Traceback (most recent call last)" in r.err


def test_pull_and_export_read_handles_from_a_file(cli: Cli, tmp_path: Path) -> None:
    listing = tmp_path / "models.txt"
    listing.write_text(f"# the paper's models\n{TFHUB}   # mymul\n\n   \n{TFHUB}/\n")
    r = cli("pull", "--from-file", str(listing), "--json")
    assert r.code == 0, r.err
    assert [x["handle"] for x in json.loads(r.out)["results"]] == [TFHUB, f"{TFHUB}/"]
    r = cli("export", "--from-file", str(listing), "-o", str(tmp_path / "b.tar.zst"), "--json")
    assert r.code == 0 and json.loads(r.out)["models"] == [TFHUB], r.out + r.err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    r = cli("pull", "--from-file", str(empty))
    assert r.code == 2 and "no handles given" in one_line(r.err)
    r = cli("pull", "--from-file", str(tmp_path / "absent.txt"))
    assert r.code == 2 and "absent.txt" in one_line(r.err)
