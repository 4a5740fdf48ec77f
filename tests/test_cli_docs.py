"""docs/cli/*.md are the commands' own --help (docs/gen_cli_docs.py): the committed pages are up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.env import BASE_ENV, REPO

GEN = REPO / "docs" / "gen_cli_docs.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GEN), *args], env=BASE_ENV, capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_the_committed_cli_pages_are_up_to_date() -> None:
    r = run("--check")
    assert r.returncode == 0, r.stderr
    pages = {p.name for p in (REPO / "docs" / "cli").glob("*.md")}
    assert {"README.md", "pull.md", "rm.md", "pins.md", "import.md", "verify.md", "daemon.md", "shim.md"} <= pages


def test_a_stale_page_is_named(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    assert run("--out", str(out)).returncode == 0
    text = (out / "rm.md").read_text()
    assert "Usage: cachemgr rm [OPTIONS] HANDLES..." in text and "--force" in text and "--dry-run" in text
    (out / "rm.md").write_text(text.replace("--force", "--forse"))
    (out / "gone.md").write_text("a command that no longer exists\n")
    r = run("--check", "--out", str(out))
    assert r.returncode == 1 and "out of date: rm.md, gone.md" in r.stderr, r.stderr
