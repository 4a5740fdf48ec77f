"""Shell completion through click's protocol (the env vars bash, zsh and fish set), in real children:
subcommands, options, and the handles in the store; a home that is not a store completes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.cli import Cli
from tests.support.env import REPO
from tests.support.lifecycle import MYMUL, TEXT1


def complete(cli: Cli, home: Path, shell: str, words: str, cword: str) -> list[str]:
    env = {**cli.env, "CACHEMGR_HOME": str(home), "_CACHEMGR_COMPLETE": f"{shell}_complete",
           "COMP_WORDS": words, "COMP_CWORD": cword}
    proc = subprocess.run([sys.executable, "-m", "cachemgr"], env=env, capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def values(lines: list[str]) -> list[str]:
    """The completions in bash's and fish's `type,value[<tab>help]` lines."""
    return [line.split(",", 1)[1].split("\t")[0] for line in lines]


def test_handles_in_the_store_complete_in_bash_zsh_and_fish(cli: Cli, home: Path) -> None:
    assert cli("pull", MYMUL, TEXT1).code == 0
    assert values(complete(cli, home, "bash", "cachemgr info ", "2")) == [MYMUL, TEXT1]
    assert values(complete(cli, home, "bash", "cachemgr rm https://tfhub.dev/google/t", "2")) == [TEXT1]
    zsh = complete(cli, home, "zsh", "cachemgr path https://tfhub.dev/google/m", "2")
    assert zsh == ["plain", MYMUL, "_"], zsh  # type, value, help ("_": none)
    assert values(complete(cli, home, "fish", "cachemgr verify ", "")) == [MYMUL, TEXT1]
    for command in ("pull", "pin", "unpin", "export", "push"):
        assert MYMUL in values(complete(cli, home, "bash", f"cachemgr {command} ", "2")), command
    # push takes many: each one after the first completes too
    assert values(complete(cli, home, "bash", f"cachemgr push --to oci://h/p {MYMUL} https://tfhub.dev/google/t",
                           "5")) == [TEXT1]
    # A --home that is not a store completes nothing, quietly.
    assert complete(cli, home, "bash", f"cachemgr --home {home}/typo info ", "4") == []


def test_subcommands_and_options_complete(cli: Cli, home: Path) -> None:
    assert set(values(complete(cli, home, "bash", "cachemgr p", "1"))) >= {"pull", "path", "pin", "pins", "prune"}
    assert "rm" in values(complete(cli, home, "bash", "cachemgr r", "1"))
    assert values(complete(cli, home, "bash", "cachemgr prune --m", "2")) == ["--max-size", "--min-free"]
    fish = complete(cli, home, "fish", "cachemgr import --d", "--d")
    assert values(fish) == ["--dry-run"] and "change nothing" in fish[0], fish


def test_the_shells_get_their_scripts(cli: Cli, home: Path) -> None:
    for shell, needle in (("bash", "complete -o nosort -F _cachemgr_completion cachemgr"),
                          ("zsh", "compdef _cachemgr_completion cachemgr"),
                          ("fish", "complete --no-files --command cachemgr")):
        env = {**cli.env, "CACHEMGR_HOME": str(home), "_CACHEMGR_COMPLETE": f"{shell}_source"}
        proc = subprocess.run([sys.executable, "-m", "cachemgr"], env=env, capture_output=True, text=True,
                              timeout=60, cwd=REPO)
        assert proc.returncode == 0 and needle in proc.stdout, (shell, proc.stdout[:500])
