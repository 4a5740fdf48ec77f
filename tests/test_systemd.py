"""systemd integration: unit files verify, sd_notify READY/WATCHDOG/STOPPING, socket activation."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cachemgr.client.daemon_client import call
from tests.support.cli import Cli
from tests.support.daemons import stop_process, wait_for
from tests.support.env import BASE_ENV, REPO

UNITS = REPO / "systemd"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is required (Debian package systemd; .ci/run installs it)"
    exe = shutil.which("cachemgr")
    assert exe
    for name in ("cachemgr.service", "cachemgr.socket"):
        text = (UNITS / name).read_text().replace("/usr/local/bin/cachemgr", exe)
        (tmp_path / name).write_text(text)
    proc = subprocess.run([analyze, "verify", str(tmp_path / "cachemgr.service"), str(tmp_path / "cachemgr.socket")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if "cachemgr" in line]
    assert ours == [], ours
    security = subprocess.run([analyze, "security", "--offline=true", str(tmp_path / "cachemgr.service")],
                              capture_output=True, text=True)
    level = re.search(r"Overall exposure level for cachemgr.service: ([0-9.]+)", security.stdout)
    assert level and float(level.group(1)) < 5.0, security.stdout[-500:]


def test_service_is_hardened_as_promised() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((UNITS / "cachemgr.service").read_text())
    svc = unit["Service"]
    assert svc["Type"] == "notify" and int(svc["WatchdogSec"]) > 0
    assert svc["User"] == "cachemgr" and svc["ProtectSystem"] == "strict"
    assert svc["ReadWritePaths"] == "/var/cache/cachemgr"
    for key in ("NoNewPrivileges", "PrivateTmp"):
        assert svc[key] == "yes"
    assert svc["RuntimeDirectory"] == "cachemgr" and int(svc["TimeoutStopSec"]) <= 10
    sock = configparser.ConfigParser(strict=False, interpolation=None)
    sock.read_string((UNITS / "cachemgr.socket").read_text())
    assert sock["Socket"]["SocketMode"] == "0660"
    tmpfiles = (UNITS / "cachemgr.tmpfiles").read_text()
    assert "/run/cachemgr" in tmpfiles and "/var/cache/cachemgr" in tmpfiles


def test_sd_notify_ready_watchdog_stopping(cli: Cli, home: Path, tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    env = {**cli.env, "CACHEMGR_HOME": str(home), "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen([sys.executable, "-m", "cachemgr", "daemon", "--socket", str(tmp_path / "d.sock")],
                            env=env, cwd=REPO, stderr=subprocess.PIPE)
    try:
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        while sum("WATCHDOG=1" in m for m in messages) < 2:
            messages.append(listener.recv(4096).decode())
        os.kill(proc.pid, signal.SIGTERM)
        while not any("STOPPING=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_socket_activation(cli: Cli, home: Path, tmp_path: Path, workers: str) -> None:
    path = tmp_path / "activated.sock"
    launcher = (
        "import os, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind(sys.argv[1]); s.listen(16)\n"
        "os.dup2(s.fileno(), 3) if s.fileno() != 3 else os.set_inheritable(3, True)\n"
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'cachemgr', 'daemon', '--socket', sys.argv[2]])\n"
    )
    env = {**BASE_ENV, **cli.env, "CACHEMGR_HOME": str(home), "CACHEMGR_WORKERS": workers}
    proc = subprocess.Popen([sys.executable, "-c", launcher, str(path), str(tmp_path / "unused.sock")],
                            env=env, cwd=REPO, stderr=subprocess.PIPE)
    try:
        def healthy() -> bool:
            try:
                return call(str(path), "GET", "/v1/health", timeout=5)[0] == 200
            except OSError:
                return False
        assert wait_for(healthy, 30)
        assert not (tmp_path / "unused.sock").exists(), "with LISTEN_FDS the daemon must not bind its own socket"
        assert wait_for(lambda: len(call(str(path), "GET", "/v1/status", timeout=5)[1]["workers"]) == int(workers) - 1)
        if workers == "2":  # the worker serves the inherited socket too: it answers while the primary is stopped
            (worker,) = call(str(path), "GET", "/v1/status", timeout=5)[1]["workers"]
            stop_process(proc.pid)
            try:
                assert call(str(path), "GET", "/v1/health", timeout=10)[1]["pid"] == worker
            finally:
                os.kill(proc.pid, signal.SIGCONT)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
