"""A real Squid (Debian ``squid``) on 127.0.0.1, a child process of the test, configured from docs/squid.conf.

``Squid(extra=[...])`` derives its config from the documented one: the lines that name places
and peers (port, ACLs, cache_dir, logs, pid file, user) are replaced, every other setting is
kept as documented, and ``extra`` lines are added (a delay pool, say). A documented directive
the derivation expects but cannot find is an error, so the docs and the tests stay one setup.

Squid runs in the foreground (``-N``) with its own cache, logs and pid file in a fresh directory
under the system temp dir (not pytest's: that is 0700 root, and Squid run as root drops to the
``proxy`` user, who must reach its files). It is started with ``-z`` first (the cache's
directories), then for real; ``url`` is what nodes set as their proxy. A missing ``squid`` is a
failure naming the package, never a skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .daemons import free_port
from .env import REPO

DOCUMENTED = REPO / "docs" / "squid.conf"


def squid_binary() -> str:
    found = shutil.which("squid") or ("/usr/sbin/squid" if os.access("/usr/sbin/squid", os.X_OK) else None)
    assert found, "squid is not installed: apt-get install squid (Debian's package; .ci/run installs it)"
    return found


def derive_config(documented: str, root: Path, port: int, user: str, extra: Sequence[str] = ()) -> str:
    """The documented config with the lines that name places and peers replaced for one test."""
    replace = {
        "http_port": f"http_port 127.0.0.1:{port}",
        "acl nodes": "acl nodes src 127.0.0.1/32",
        "acl cachemgr_port": "acl cachemgr_port port 1024-65535",  # the test daemons' random ports
        "cache_dir": f"cache_dir aufs {root}/cache 4000 4 16",
        "cache_mem": "cache_mem 64 MB",
        "cache_effective_user": f"cache_effective_user {user}",
        "pid_filename": f"pid_filename {root}/squid.pid",
        "access_log": f"access_log stdio:{root}/access.log squid",
        "cache_log": f"cache_log {root}/cache.log",
        "coredump_dir": f"coredump_dir {root}",
    }
    out, seen = [], set()
    for line in documented.splitlines():
        key = next((k for k in replace if line == k or line.startswith(k + " ")), None)
        if key is not None:
            seen.add(key)
            line = replace[key]
        out.append(line)
    missing = sorted(set(replace) - seen)
    assert not missing, f"{DOCUMENTED} lacks {missing}: update it or tests/support/squid.py"
    out += ["# for the tests", "visible_hostname cachemgr-test-squid", "shutdown_lifetime 1 seconds",
            "pinger_enable off", "logfile_rotate 0", *extra]
    return "\n".join(out) + "\n"


class Squid:
    """One Squid child on 127.0.0.1; a context manager (stops it and removes its directory)."""

    def __init__(self, extra: Sequence[str] = ()) -> None:
        self.binary = squid_binary()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cachemgr-squid-"))
        os.chmod(self.root, 0o755)
        user = pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:  # Squid drops root for cache_effective_user; Debian's is proxy
            user = "proxy"
            entry = pwd.getpwnam(user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.config = self.root / "squid.conf"
        self.config.write_text(derive_config(DOCUMENTED.read_text(), self.root, self.port, user, extra))
        self.output = self.root / "squid.out"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.root / "access.log"

    def start(self, timeout: float = 60) -> Squid:
        init = subprocess.run([self.binary, "-N", "-z", "-f", str(self.config)], capture_output=True,
                              text=True, timeout=timeout)
        assert init.returncode == 0, f"squid -z failed: {init.stdout}{init.stderr}{self.cache_log()}"
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen([self.binary, "-N", "-d", "1", "-f", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._accepts():
            assert self.proc.poll() is None, f"squid exited {self.proc.returncode}: {self.log_text()}"
            assert time.monotonic() < deadline, f"squid did not listen on {self.url}: {self.log_text()}"
            time.sleep(0.1)
        return self

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def cache_log(self) -> str:
        path = self.root / "cache.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def log_text(self) -> str:
        out = self.output.read_text(errors="replace")[-4000:] if self.output.exists() else ""
        return out + self.cache_log()

    def access_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Squid:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
