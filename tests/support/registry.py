"""A real OCI registry for the tests: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1.

``LocalRegistry`` writes a config (filesystem storage under its own directory, access log on),
starts ``docker-registry serve`` on a free port and waits until ``/v2/`` answers. With
``user``/``password`` it is an htpasswd registry (bcrypt, by the Python ``bcrypt`` package);
``auth_yaml`` gives another auth block (token_server.py's).
Its access log tells which blobs were uploaded (``uploads``), and ``blob_file`` is where the
registry keeps a blob on disk, for tampering with it.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

_UPLOAD = re.compile(r'"PUT /v2/(\S+)/blobs/uploads/\S*digest=sha256(?:%3A|:)([0-9a-f]{64})')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRegistry:
    def __init__(self, root: Path, user: str | None = None, password: str | None = None,
                 auth_yaml: str | None = None) -> None:
        assert shutil.which("docker-registry"), "docker-registry (Debian package docker-registry) is required"
        self.root = root
        self.user = user
        self.password = password
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = root / "storage"
        self.log_path = root / "registry.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.auth_yaml = auth_yaml  # another auth block (e.g. a token server's)

    def _config(self) -> Path:
        auth = self.auth_yaml or ""
        if self.user is not None and self.auth_yaml is None:
            import bcrypt  # the test extra (pyproject); htpasswd entries must be bcrypt

            assert self.password is not None
            hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
            (self.root / "htpasswd").write_text(f"{self.user}:{hashed}\n")
            auth = f"auth:\n  htpasswd:\n    realm: cachemgr-test\n    path: {self.root / 'htpasswd'}\n"
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n" + auth
        )
        return config

    def start(self) -> LocalRegistry:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self._config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2).close()
                return self
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return self
            except OSError:
                pass
            assert self.proc.poll() is None, f"docker-registry exited: {self.log()[-2000:]}"
            assert time.monotonic() < deadline, f"docker-registry did not answer in 30 s: {self.log()[-2000:]}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def uploads(self) -> Counter[str]:
        """How many times each blob (sha256 hex) was uploaded, by the registry's own access log."""
        return Counter(m.group(2) for m in _UPLOAD.finditer(self.log()))

    def blob_file(self, digest: str) -> Path:
        return self.storage / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"

    def url(self, prefix: str = "") -> str:
        return f"oci://{self.host}/{prefix}".rstrip("/")

    def auth_file(self, path: Path, user: str | None = None, password: str | None = None) -> Path:
        """A docker config.json with credentials for this registry."""
        token = base64.b64encode(f"{user or self.user}:{password or self.password}".encode()).decode()
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        return path
