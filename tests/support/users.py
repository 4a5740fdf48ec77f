"""Real users for the shared-store tests: two in one group, one outside it, and ``cachemgr`` run as each.

The suite runs as root (dev and CI). ``ensure_users`` creates, when missing, the group
``cmgr-share`` and the users ``cmgr-alice`` and ``cmgr-bob`` in it (each with a personal
primary group, as on a real site: only the setgid directory gives their files the shared
group), and ``cmgr-eve``, who is not in it. Nothing is skipped: without root, ``useradd`` or
``setpriv`` the fixture fails and says why.

``Site`` is one throw-away site: a directory under /tmp that the users can reach, a shared
setgid group directory in it (``shared/``, root:cmgr-share 2775) where the store goes
(``shared/store``, made by whoever runs first), and a private HOME per user. ``Site.run``
runs ``cachemgr --home STORE ...`` as a user through ``setpriv --reuid --regid
--init-groups`` with the same venv python (``sys.executable``) and the checkout as cwd.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .cli import Result
from .env import BASE_ENV, REPO

GROUP = "cmgr-share"
ALICE, BOB, EVE = "cmgr-alice", "cmgr-bob", "cmgr-eve"
MEMBERS = (ALICE, BOB)


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int  # the personal primary group


def _run_admin(*cmd: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which(cmd[0]), f"{cmd[0]} is missing: install the Debian package 'passwd'"
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


def _retry(*cmd: str, ok: tuple[int, ...] = (0,)) -> None:
    """Run an account tool; another test worker holding /etc/passwd's lock is retried."""
    proc = _run_admin(*cmd)
    for _ in range(50):
        if proc.returncode in ok:
            return
        time.sleep(0.1)
        proc = _run_admin(*cmd)
    raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}; the multi-user "
                         "tests need root (they create real users)")


def _user(name: str) -> User:
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid)


def ensure_users() -> dict[str, User]:
    """The three users (created if missing), checked: alice and bob in ``GROUP``, eve not."""
    assert os.geteuid() == 0, "the multi-user tests create real users: run the suite as root (as dev and CI do)"
    _retry("groupadd", "-f", GROUP)
    for name in (ALICE, BOB, EVE):
        try:
            pwd.getpwnam(name)
        except KeyError:
            extra = ["-G", GROUP] if name in MEMBERS else []
            # 9: created meanwhile by another test worker
            _retry("useradd", "-M", "-U", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", *extra, name, ok=(0, 9))
    members = set(grp.getgrnam(GROUP).gr_mem)
    for name in MEMBERS:
        if name not in members:
            _retry("usermod", "-aG", GROUP, name)
    members = set(grp.getgrnam(GROUP).gr_mem)
    assert set(MEMBERS) <= members and EVE not in members, f"group {GROUP} has {sorted(members)}"
    return {name: _user(name) for name in (ALICE, BOB, EVE)}


class Site:
    """A shared setgid group directory with a store in it, and a HOME per user."""

    def __init__(self, users: dict[str, User], env: dict[str, str]) -> None:
        assert shutil.which("setpriv"), "setpriv is missing: install the Debian package 'util-linux'"
        self.users = users
        self.gid = grp.getgrnam(GROUP).gr_gid
        self.root = Path(tempfile.mkdtemp(prefix="cachemgr-site-", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.shared = self.root / "shared"
        self.shared.mkdir()
        os.chown(self.shared, 0, self.gid)
        os.chmod(self.shared, 0o2775)
        self.store = self.shared / "store"
        self.env = env
        for user in users.values():
            home = self.home_of(user.name)
            home.mkdir(mode=0o700)
            os.chown(home, user.uid, user.gid)
        for user in users.values():
            self.check_can_run(user.name)

    def home_of(self, name: str) -> Path:
        return self.root / f"home-{name}"

    def file(self, name: str, data: bytes) -> Path:
        """A file every user may read (an archive to add, say)."""
        path = self.root / name
        path.write_bytes(data)
        os.chmod(path, 0o644)
        return path

    def as_user(self, name: str, argv: list[str], *, umask: int = 0o022, env: dict[str, str] | None = None,
                timeout: float = 180) -> Result:
        """``argv`` as ``name`` (real and effective uid and gid, its groups), HOME its own."""
        user = self.users[name]
        home = self.home_of(name)
        full_env = {k: v for k, v in self.env.items() if k not in ("XDG_RUNTIME_DIR", "TMPDIR")}
        full_env.update(HOME=str(home), USER=name, LOGNAME=name, XDG_CONFIG_HOME=str(home / ".config"),
                        XDG_CACHE_HOME=str(home / ".cache"), TMPDIR=str(home), **(env or {}))
        cmd = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--", *argv]
        proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              umask=umask)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def run(self, name: str, *args: str, umask: int = 0o022, home: Path | None = None) -> Result:
        """``cachemgr --home STORE ARGS`` as ``name`` (the venv's python, the checkout on PYTHONPATH)."""
        store = self.store if home is None else home
        return self.as_user(name, [sys.executable, "-m", "cachemgr", "--home", str(store), *args], umask=umask)

    def check_can_run(self, name: str) -> None:
        res = self.as_user(name, [sys.executable, "-c", "import cachemgr.cli.main"])
        assert res.code == 0, (
            f"user {name} cannot run {sys.executable} with the checkout {REPO}: {res.err.strip()[-500:]}; the "
            "venv and the checkout (and every directory above them) must be readable and searchable by other "
            "users: chmod o+rX on them"
        )

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def site_env(mirrors: str) -> dict[str, str]:
    """The environment of the users' commands: the suite's, pointed at the fake origin."""
    return dict(BASE_ENV, CACHEMGR_MIRRORS=mirrors, CACHEMGR_RETRIES="3", CACHEMGR_BACKOFF="0.05")
