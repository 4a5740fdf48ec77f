"""Docker credential helpers (credHelpers, credsStore) against real registries (issue 12).

The helper is a real executable the test writes, ``docker-credential-cmgrtest`` on PATH, that
speaks docker's protocol (``get``, the server on stdin, ``{"ServerURL","Username","Secret"}`` on
stdout, "credentials not found" when it has none) from a JSON file beside it, and logs each call.
The registries are Debian's docker-registry (distribution 2.8) with htpasswd auth, and with a
token server (another host) that also takes docker's OAuth2 identity-token POST.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Cli, Result
from tests.support.daemons import free_port
from tests.support.env import BASE_ENV
from tests.support.registry import LocalRegistry
from tests.support.suite import Models
from tests.support.token_server import HOST, TokenServer

HANDLE = "https://tfhub.dev/site/model/1"
HELPER = "cmgrtest"
SCRIPT = """#!{python}
import json, sys, time
from pathlib import Path
here = Path(__file__).resolve().parent
server = sys.stdin.read()
with (here / "calls.log").open("a") as log:
    log.write(json.dumps([sys.argv[1:], server]) + "\\n")
mode = (here / "mode").read_text().strip() if (here / "mode").exists() else "store"
if mode == "fail":
    print("the keyring is locked", file=sys.stderr)
    sys.exit(3)
if mode == "hang":
    time.sleep(600)
if mode == "garbage":
    print("hello")
    sys.exit(0)
store = json.loads((here / "store.json").read_text()) if (here / "store.json").exists() else {{}}
if sys.argv[1:] != ["get"] or server not in store:
    print("credentials not found in native keychain")
    sys.exit(1)
print(json.dumps({{"ServerURL": server, **store[server]}}))
"""


class Helper:
    """The helper's directory (on PATH): its store, its mode, and the calls it got."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        exe = self.bin / f"docker-credential-{HELPER}"
        exe.write_text(SCRIPT.format(python=sys.executable))
        exe.chmod(0o755)

    def store(self, server: str, user: str, secret: str) -> None:
        (self.bin / "store.json").write_text(json.dumps({server: {"Username": user, "Secret": secret}}))

    def mode(self, mode: str) -> None:
        (self.bin / "mode").write_text(mode)

    def calls(self) -> list[list[Any]]:
        log = self.bin / "calls.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("cred-registry"), user="alice", password="s3cret") as reg:
        yield reg


@pytest.fixture(scope="module")
def src_home(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Path:
    root = tmp_path_factory.mktemp("cred-src")
    r = Cli(root / "home", _env(root))("add", HANDLE, str(models.text_v1))
    assert r.code == 0, r.err
    return root / "home"


def _env(root: Path) -> dict[str, str]:
    return {**BASE_ENV, "XDG_CONFIG_HOME": str(root / "xdg"), "CACHEMGR_RETRIES": "0",
            "CACHEMGR_MIRRORS": f"https://tfhub.dev/=http://127.0.0.1:{free_port()}/"}


def _cli(home: Path, tmp_path: Path, helper: Helper, config: dict[str, Any], **env: str) -> Cli:
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.json"
    path.write_text(json.dumps(config))
    return Cli(home, {**_env(tmp_path), "PATH": f"{helper.bin}{os.pathsep}{BASE_ENV['PATH']}",
                      "REGISTRY_AUTH_FILE": str(path), **env})


def _one_line(r: Result, code: int, *words: str) -> None:
    assert r.code == code, (r.code, r.err)
    assert r.err.count("\n") == 1 and "Traceback" not in r.err, r.err
    assert all(w in r.err for w in words), r.err


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_push_and_pull_with_credentials_from_a_helper(registry: LocalRegistry, src_home: Path,
                                                      tmp_path: Path) -> None:
    helper = Helper(tmp_path)
    helper.store(registry.host, "alice", "s3cret")
    cli = _cli(src_home, tmp_path, helper, {"credsStore": HELPER})
    r = cli("push", HANDLE, "--to", registry.url("store"), "--json")
    assert r.code == 0, r.err
    assert helper.calls() == [[["get"], registry.host]]  # docker's protocol: the server on stdin, once
    # credHelpers[host] wins over credsStore (a helper that is not there) and over auths (a wrong password)
    config = {"credsStore": "cmgrnothere", "credHelpers": {registry.host: HELPER},
              "auths": {registry.host: {"auth": _basic("alice", "wrong")}}}
    fresh = _cli(tmp_path / "fresh", tmp_path, helper, config)
    r = fresh("pull", f"{registry.url('store')}/site/model:1", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["results"][0]["canonical"] == HANDLE


def test_a_helper_that_is_missing_fails_or_hangs_is_one_line_naming_it(registry: LocalRegistry, src_home: Path,
                                                                       tmp_path: Path) -> None:
    helper = Helper(tmp_path)
    helper.store(registry.host, "alice", "s3cret")
    r = _cli(src_home, tmp_path, helper, {"credsStore": "cmgrnothere"})("push", HANDLE, "--to", registry.url("x"))
    _one_line(r, 7, "docker-credential-cmgrnothere", "not on PATH", "credsStore in", "install it")
    (tmp_path / "timeout.toml").write_text("connect_timeout = 2\n")
    cli = _cli(src_home, tmp_path, helper, {"credHelpers": {registry.host: HELPER}},
               CACHEMGR_CONFIG=str(tmp_path / "timeout.toml"))
    helper.mode("fail")
    _one_line(cli("push", HANDLE, "--to", registry.url("x")), 7, f"docker-credential-{HELPER} failed",
              "exit 3: the keyring is locked", f"docker login {registry.host}")
    helper.mode("garbage")
    _one_line(cli("push", HANDLE, "--to", registry.url("x")), 7, f"docker-credential-{HELPER} answered no")
    helper.mode("hang")  # killed after connect_timeout
    _one_line(cli("push", HANDLE, "--to", registry.url("x")), 7, "gave no answer in 2 s")
    bad = _cli(src_home, tmp_path, helper, {"credsStore": "../../bin/sh"})
    _one_line(bad("push", HANDLE, "--to", registry.url("x")), 3, "not the NAME of a credential helper")


def test_a_helper_without_credentials_means_anonymous_and_the_error_names_the_fix(
        registry: LocalRegistry, src_home: Path, tmp_path: Path) -> None:
    helper = Helper(tmp_path)
    helper.store("elsewhere:5000", "alice", "s3cret")
    # as for docker, a credsStore is the only source: the auths entry (right here) is not used
    config = {"credsStore": HELPER, "auths": {registry.host: {"auth": _basic("alice", "s3cret")}}}
    r = _cli(src_home, tmp_path, helper, config)("push", HANDLE, "--to", registry.url("anon"))
    _one_line(r, 7, "wants a user name and password", f"docker-credential-{HELPER} has none for it",
              f"run `docker login {registry.host}`", "credsStore in")
    assert helper.calls() == [[["get"], registry.host]]
    helper.store(registry.host, "alice", "wrong")
    r = _cli(src_home, tmp_path, helper, config)("push", HANDLE, "--to", registry.url("anon"))
    _one_line(r, 7, "refused the credentials", f"from docker-credential-{HELPER}")


class OAuthTokenServer(TokenServer):
    """tests/support/token_server.py's server, also taking docker's identity-token POST
    (``grant_type=refresh_token``): the refresh token ``refresh`` gets every scope asked for."""

    def __init__(self, root: Path, refresh: str) -> None:
        super().__init__(root, "nobody", "-")
        self.refresh = refresh
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.answer(self)

            def do_POST(self) -> None:  # noqa: N802
                server.answer_post(self)

            def log_message(self, *args: object) -> None:
                return

        self.httpd.server_close()
        self.httpd = http.server.ThreadingHTTPServer((HOST, self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer_post(self, req: http.server.BaseHTTPRequestHandler) -> None:
        form = urllib.parse.parse_qs(req.rfile.read(int(req.headers.get("Content-Length", "0"))).decode())
        ok = form.get("grant_type") == ["refresh_token"] and form.get("refresh_token") == [self.refresh]
        scopes = form.get("scope", [""])[0].split()
        self.requests.append({"path": "POST", "scopes": scopes, "authorized": ok,
                              "client_id": form.get("client_id", [""])[0]})
        body = json.dumps({"access_token": self.token(scopes), "expires_in": 300}).encode() if ok else b"{}"
        req.send_response(200 if ok else 401)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)


def test_an_identity_token_from_a_helper_is_traded_by_the_oauth2_post(src_home: Path, tmp_path: Path) -> None:
    helper = Helper(tmp_path)
    with OAuthTokenServer(tmp_path, "r3fr3sh") as tokens, \
            LocalRegistry(tmp_path / "reg", auth_yaml=tokens.auth_yaml()) as reg:
        helper.store(reg.host, "<token>", "r3fr3sh")
        cli = _cli(src_home, tmp_path, helper, {"credHelpers": {reg.host: HELPER}})
        r = cli("push", HANDLE, "--to", reg.url("tok"), "--json")
        assert r.code == 0, r.err
        posts = [x for x in tokens.requests if x["path"] == "POST"]
        assert posts and all(x["authorized"] and x["client_id"] == "cachemgr" for x in posts), tokens.requests
        assert any("repository:tok/site/model:pull,push" in x["scopes"] for x in posts), posts
        assert not [x for x in tokens.requests if x["path"] != "POST"], "no basic GET with an identity token"
        helper.store(reg.host, "<token>", "expired")
        r = _cli(src_home, tmp_path, helper, {"credHelpers": {reg.host: HELPER}})("push", HANDLE, "--to",
                                                                                  reg.url("tok"))
        _one_line(r, 7, "refused the identity token", f"docker-credential-{HELPER}")
