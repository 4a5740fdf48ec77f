"""The crash loop's parts: small TensorFlow-free model archives, runs that get killed, and the checks
made after each kill (refs point at complete models; the dead runs' temps get collected).

``run_killed`` starts a real ``cachemgr`` child and sends it SIGKILL after a delay (unless it
ended first); a run with ``CACHEMGR_FAULT_AT`` ends itself with ``FAULT_EXIT`` at its fault point.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cachemgr.store.faults import FAULT_EXIT
from cachemgr.store.fs import owner_of

from .archives import PLACEHOLDER_PB, Member, tar_bytes
from .env import REPO


def small_archive(seed: int, size: int = 192 * 1024) -> bytes:
    """A SavedModel-shaped archive (placeholder graph, one variables shard, a vocab) of ~``size`` bytes."""
    rng = random.Random(seed)
    data = rng.randbytes(size)
    return tar_bytes([
        Member("saved_model.pb", data=PLACEHOLDER_PB + str(seed).encode()),
        Member("variables", type=b"5"),
        Member("variables/variables.index", data=hashlib.sha256(data).digest()),
        Member("variables/variables.data-00000-of-00001", data=data),
        Member("assets", type=b"5"),
        Member("assets/vocab.txt", data=f"model {seed}\n".encode() * 50),
    ])


@dataclass
class Outcome:
    pid: int
    code: int
    killed: bool  # by our SIGKILL, or by its own fault point (FAULT_EXIT)
    err: str


def run_killed(args: list[str], env: dict[str, str], delay: float | None, timeout: float = 120) -> Outcome:
    """Run ``cachemgr ARGS``; SIGKILL it after ``delay`` seconds if it is still running (None: never)."""
    proc = subprocess.Popen([sys.executable, "-m", "cachemgr", *args], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = False
    try:
        proc.wait(delay if delay is not None else timeout)
    except subprocess.TimeoutExpired:
        if delay is None:
            proc.kill()
            raise
        os.kill(proc.pid, signal.SIGKILL)
        killed = True
    _out, err = proc.communicate(timeout=timeout)
    code = proc.returncode
    return Outcome(proc.pid, code, killed or code == FAULT_EXIT, err)


def temps_of(home: Path, pids: set[int]) -> list[str]:
    """Entries of HOME/tmp owned by one of ``pids`` (by the ``kind.host.pid.uuid`` name)."""
    tmp = home / "tmp"
    out = []
    for name in os.listdir(tmp) if tmp.is_dir() else []:
        owner = owner_of(name)
        if owner is not None and owner[1] in pids:
            out.append(name)
    return sorted(out)


def partial_models(home: Path) -> list[str]:
    """Refs whose model is not all there: manifest missing, or a snapshot file absent or of the wrong size."""
    bad = []
    refs = home / "refs"
    for ref_file in sorted(refs.glob("*.json")) if refs.is_dir() else []:
        ref = json.loads(ref_file.read_bytes())
        manifest = home / "manifests" / "sha256" / f"{ref['manifest']}.json"
        if not manifest.is_file():
            bad.append(f"{ref['handle']}: manifest missing")
            continue
        snapshot = home / "snapshots" / ref["manifest"]
        for path, _mode, size, _sha in json.loads(manifest.read_bytes())["files"]:
            f = snapshot / path
            if not f.is_file() or f.stat().st_size != size:
                bad.append(f"{ref['handle']}: {path} missing or partial")
                break
    return bad


@dataclass
class Tally:
    """What the loop did, for the figures it prints."""

    kills: dict[str, int] = field(default_factory=dict)
    faults: set[str] = field(default_factory=set)
    faults_tried: set[str] = field(default_factory=set)
    completed: dict[str, int] = field(default_factory=dict)
    collected: int = 0

    def count(self, table: dict[str, int], op: str) -> None:
        table[op] = table.get(op, 0) + 1

    def summary(self, seed: int) -> str:
        kills = dict(sorted(self.kills.items()))
        return (f"crash loop seed={seed}: kills survived {sum(self.kills.values())} {kills}; "
                f"fault points covered {len(self.faults)} of {len(self.faults_tried)} tried "
                f"{sorted(self.faults)}; completed runs {dict(sorted(self.completed.items()))}; "
                f"dead runs' temps collected {self.collected}")
