"""A real GlusterFS volume, mounted once per simulated node, for the many-node tests (issue 11).

- ``GlusterVolume``: a distributed (DHT) volume of ``bricks`` bricks on this host, made through
  ``glusterd`` (started here if ``.ci/run`` did not), started, and on ``close()`` stopped and
  deleted with its brick directories. Bricks are named by the host's name: ``gluster`` refuses
  ``127.0.0.1`` and ``localhost`` as brick hosts.
- ``Node``: a long-lived holder process in a private mount namespace
  (``unshare -m --propagation private``) that made its OWN FUSE mount of the volume (its own
  ``glusterfs`` client, its own caches) at ``mount``, the same absolute path on every node (saved
  Keras models record that path: tensorflow/hub#687). ``argv(...)`` wraps a command with
  ``nsenter -t HOLDER -m --`` so that it runs "on the node"; ``offline=True`` adds ``unshare -n``
  (no network) inside it. The node's ``local`` directory is on this host's disk, outside the
  volume: sockets, ready files and logs go there (the test process sees it, nodes see it too).
- ``GlusterBed``: the volume, its nodes, and ``host``, this process's own FUSE mount of the
  volume at another path, so that tests can look at what the nodes wrote (``on_host(path)``).

Every step that fails raises ``GlusterError`` naming the command and its output: a test that
needs the volume fails, never skips.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PREFIX = "cmgrtest"  # volume names: cmgrtest_<pid>_<random>; a dead pid's volume is cleaned up
TOOLS = {"glusterd": "glusterfs-server", "gluster": "glusterfs-server", "glusterfs": "glusterfs-client",
         "unshare": "util-linux", "nsenter": "util-linux", "mount": "mount"}


class GlusterError(AssertionError):
    """The bed could not be set up; the message names the command and what it said."""


def _run(*cmd: str, timeout: float = 60) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise GlusterError(f"{' '.join(cmd)}: no answer after {timeout:.0f}s") from exc
    if proc.returncode != 0:
        raise GlusterError(f"{' '.join(cmd)} exited {proc.returncode}: {(proc.stdout + proc.stderr).strip()}")
    return proc.stdout


def gluster(*args: str, timeout: float = 60) -> str:
    return _run("gluster", "--mode=script", *args, timeout=timeout)


def check_tools() -> None:
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            raise GlusterError(f"{tool} is missing: install the Debian package {package} (.ci/run does)")
    if not os.path.exists("/dev/fuse"):
        raise GlusterError("/dev/fuse is missing: the GlusterFS client is FUSE (modprobe fuse)")
    if os.geteuid() != 0:
        raise GlusterError("the GlusterFS bed needs root (glusterd, mount namespaces, FUSE mounts)")


def ensure_glusterd(timeout: float = 30) -> None:
    """Start glusterd if it is not running (``.ci/run`` starts it), and wait until it answers."""
    if subprocess.run(["pgrep", "-x", "glusterd"], capture_output=True).returncode != 0:
        _run("glusterd")
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run(["gluster", "--mode=script", "volume", "list"], capture_output=True, text=True)
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise GlusterError(f"glusterd does not answer `gluster volume list`: {proc.stdout}{proc.stderr}")
        time.sleep(0.2)


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def delete_volume(name: str) -> None:
    with contextlib.suppress(GlusterError):
        gluster("volume", "stop", name, "force")
    gluster("volume", "delete", name)


def clean_stale_volumes() -> None:
    """Delete test volumes left by sessions that died (their creator's pid is gone)."""
    for name in gluster("volume", "list").split():
        parts = name.split("_")
        if len(parts) == 3 and parts[0] == PREFIX and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            with contextlib.suppress(GlusterError):
                delete_volume(name)


class GlusterVolume:
    def __init__(self, root: Path, bricks: int = 2) -> None:
        assert bricks >= 2, "a distributed volume needs at least 2 bricks"
        check_tools()
        ensure_glusterd()
        clean_stale_volumes()
        self.host = socket.gethostname()
        self.name = f"{PREFIX}_{os.getpid()}_{secrets.token_hex(3)}"
        self.bricks = [root / "bricks" / f"b{i}" / "brick" for i in range(1, bricks + 1)]
        for b in self.bricks:
            b.parent.mkdir(parents=True, exist_ok=True)
        gluster("volume", "create", self.name, *(f"{self.host}:{b}" for b in self.bricks), "force")
        try:
            gluster("volume", "start", self.name)
        except GlusterError:
            delete_volume(self.name)
            raise
        self.source = f"{self.host}:/{self.name}"

    def close(self) -> None:
        delete_volume(self.name)
        for b in self.bricks:
            shutil.rmtree(b.parent, ignore_errors=True)


def _wait_mounted(proc: subprocess.Popen[bytes], mount: Path, what: str, timeout: float = 60) -> None:
    """Wait for the holder's "mounted" line; a holder that exits or stays silent is an error."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        chunk = proc.stdout.read()
        if chunk:
            line += chunk
            if b"mounted\n" in line:
                return
        if proc.poll() is not None:
            raise GlusterError(f"{what}: mount -t glusterfs onto {mount} failed: {line.decode(errors='replace')}")
        time.sleep(0.05)
    proc.kill()
    raise GlusterError(f"{what}: mount -t glusterfs onto {mount} did not finish in {timeout:.0f}s")


# The holder: mount, say so, then wait for stdin to close (teardown, or this process dying) and
# detach the mount, which ends this node's glusterfs client.
_HOLDER = 'mkdir -p "$2" && mount -t glusterfs "$1" "$2" 2>&1 && echo mounted && cat >/dev/null; umount -l "$2"'


class Node:
    """One simulated node: its own mount namespace and FUSE client; see the module docstring."""

    def __init__(self, volume: GlusterVolume, index: int, mount: Path, local: Path) -> None:
        self.index = index
        self.name = f"node{index}"
        self.mount = mount
        self.local = local
        local.mkdir(parents=True, exist_ok=True)
        self.holder = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "--", "sh", "-c", _HOLDER, "holder", volume.source,
             str(mount)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _wait_mounted(self.holder, mount, self.name)

    def argv(self, *cmd: str, offline: bool = False) -> list[str]:
        """``cmd`` as run on this node (and with no network at all when ``offline``)."""
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--", *(["unshare", "-n"] if offline else []), *cmd]

    def run(self, *cmd: str, env: dict[str, str] | None = None, offline: bool = False, timeout: float = 120,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*cmd, offline=offline), env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)

    def sh(self, script: str, timeout: float = 60) -> str:
        """Run a shell ``script`` on the node; its stdout (a failure is an AssertionError with stderr)."""
        proc = self.run("sh", "-ec", script, timeout=timeout)
        assert proc.returncode == 0, f"{self.name}: sh -ec {script!r} exited {proc.returncode}: {proc.stderr}"
        return proc.stdout

    def close(self) -> None:
        if self.holder.poll() is None:
            assert self.holder.stdin is not None
            with contextlib.suppress(OSError):
                self.holder.stdin.close()
            try:
                self.holder.wait(20)
            except subprocess.TimeoutExpired:
                self.holder.send_signal(signal.SIGKILL)
                self.holder.wait()
        if self.holder.stdout is not None:
            self.holder.stdout.close()


class GlusterBed:
    """The session's volume, ``nodes`` simulated nodes mounted at ``mount``, and this process's ``host`` mount."""

    def __init__(self, root: Path, nodes: int = 4, bricks: int = 2) -> None:
        self.root = root
        self.mount = root / "cluster"          # every node's own mount, at this one path
        self.host = root / "host"              # this process's mount of the same volume
        self.nodes: list[Node] = []
        self.volume = GlusterVolume(root, bricks)
        self._host_holder: subprocess.Popen[bytes] | None = None
        try:
            self.add_nodes(nodes)
            self.host.mkdir(parents=True, exist_ok=True)
            _run("mount", "-t", "glusterfs", self.volume.source, str(self.host))
            self._host_mounted = True
        except BaseException:
            self.close()
            raise

    def add_nodes(self, count: int) -> list[Node]:
        """Mount ``count`` more nodes (the benchmarks use 16)."""
        first = len(self.nodes) + 1
        for i in range(first, first + count):
            self.nodes.append(Node(self.volume, i, self.mount, self.root / "nodes" / f"node{i}"))
        return self.nodes[first - 1:]

    def on_host(self, path: Path) -> Path:
        """The path under this process's own mount of a path that nodes see under ``mount``."""
        return self.host / path.relative_to(self.mount)

    def kill_users(self) -> None:
        """SIGKILL every process still using a node's mount (a FUSE call may ignore SIGTERM)."""
        for node in self.nodes:
            for pid in _pids_in_mount_ns(node.holder.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        self.kill_users()
        for node in self.nodes:
            node.close()
        if getattr(self, "_host_mounted", False):
            subprocess.run(["umount", "-l", str(self.host)], capture_output=True)
        self.volume.close()


def _pids_in_mount_ns(holder: int) -> list[int]:
    """Processes in ``holder``'s mount namespace, other than the holder and the FUSE client."""
    try:
        ns = os.readlink(f"/proc/{holder}/ns/mnt")
    except OSError:
        return []
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == holder:
            continue
        try:
            if os.readlink(entry / "ns" / "mnt") != ns:
                continue
            comm = (entry / "comm").read_text().strip()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if comm != "glusterfs" and ppid != holder:
            out.append(int(entry.name))
    return out
