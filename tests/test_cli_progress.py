"""Progress bars on a terminal for verify (blob hashing, and --deep's loads), prune and rm, as for
pull, export and import; none when the output is not a terminal. `script` gives the child a pty."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.cli import Cli
from tests.support.lifecycle import MYMUL, TEXT1


def on_a_tty(cli: Cli, home: Path, *args: str) -> tuple[int, str]:
    script = shutil.which("script")
    assert script, "script(1) from util-linux/bsdutils is required"
    env = {**cli.env, "CACHEMGR_HOME": str(home)}
    cmd = shlex.join([sys.executable, "-m", "cachemgr", *args])
    tty = subprocess.run([script, "-qec", cmd, "/dev/null"], env=env, capture_output=True, text=True, timeout=600)
    return tty.returncode, tty.stdout


def test_verify_shows_a_bar_on_a_tty_and_none_otherwise(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL, TEXT1).code == 0
    code, out = on_a_tty(cli, home, "verify")
    assert code == 0, out
    assert "verify blobs: 100%|" in out and "B/s]" in out, out[-800:]
    assert "verified " in out  # the report itself still follows
    piped = cli("verify")
    assert piped.code == 0 and "%|" not in piped.err and "%|" not in piped.out


def test_verify_deep_counts_the_models_it_loads(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL).code == 0
    code, out = on_a_tty(cli, home, "verify", "--deep", MYMUL)
    assert code == 0, out[-2000:]
    assert "verify --deep: 100%|" in out and "1/1" in out and "model" in out, out[-800:]
    assert f"loads: {MYMUL}" in out, out[-800:]


def test_prune_shows_a_bar_on_a_tty_and_none_for_a_dry_run_or_a_pipe(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL).code == 0
    code, out = on_a_tty(cli, home, "prune", "--dry-run", "--max-size", "0", "--grace", "0")
    assert code == 0 and "%|" not in out and "would evict" in out, out
    code, out = on_a_tty(cli, home, "prune", "--max-size", "0", "--grace", "0")
    assert code == 0, out
    assert "prune: 100%|" in out and "item" in out and "1 model evicted" in out, out[-800:]
    assert cli("pull", TEXT1).code == 0
    piped = cli("prune", "--max-size", "0", "--grace", "0")
    assert piped.code == 0 and "%|" not in piped.err and "1 model evicted" in piped.out, piped.out + piped.err


def test_rm_shows_a_bar_on_a_tty_and_none_for_a_dry_run_or_a_pipe(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL, TEXT1).code == 0
    code, out = on_a_tty(cli, home, "rm", "--dry-run", MYMUL)
    assert code == 0 and "%|" not in out and "would remove" in out, out
    code, out = on_a_tty(cli, home, "rm", MYMUL)
    assert code == 0, out
    assert "rm: 100%|" in out and "item" in out and "removed 1 model" in out, out[-800:]
    piped = cli("rm", TEXT1)
    assert piped.code == 0 and "%|" not in piped.err and "removed 1 model" in piped.out, piped.out + piped.err
