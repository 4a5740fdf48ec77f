"""The ``cachemgr`` command line as tests run it: a real child process (``Cli``) and what it said (``Result``)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .env import REPO


@dataclass
class Result:
    code: int
    out: str
    err: str


class Cli:
    """Runs the real ``cachemgr`` console entry point in a child process."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env

    def __call__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
        full_env = {**self.env, "CACHEMGR_HOME": str(self.home), **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "cachemgr", *args], env=full_env, capture_output=True,
            text=True, timeout=timeout, cwd=REPO,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)
