"""Registry credentials as docker finds them in a config.json: credHelpers, credsStore, auths.

The file is the one ``Settings.registry_auth_file`` names (REGISTRY_AUTH_FILE, else
$DOCKER_CONFIG/config.json, else ~/.docker/config.json). Docker's precedence, for a host:

1. ``credHelpers["HOST[:PORT]"]``: that credential helper;
2. ``credsStore``: the helper for every other host;
3. ``auths["HOST[:PORT]"]``: ``auth`` (base64 of ``user:password``), ``username``/``password``,
   or an ``identitytoken``.

A helper is docker's credential-helper protocol: ``docker-credential-NAME get`` on PATH, the
server (HOST[:PORT]) on stdin, ``{"ServerURL", "Username", "Secret"}`` JSON on stdout; the user
``<token>`` means the secret is an identity (OAuth2 refresh) token. Its "credentials not found"
answer means anonymous, as for docker; a helper that is missing, fails, hangs past the timeout
or answers something else is a one-line RegistryAuthError naming it and the fix. It runs in a
session of its own, killed whole on timeout. Callers run this in a thread (it reads a file and
may run a program), never on an event loop.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachemgr.errors import ConfigError, RegistryAuthError

HELPER_PREFIX = "docker-credential-"
IDENTITY_USER = "<token>"  # docker's user name for an identity token
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Credentials:
    user: str
    secret: str

    @property
    def identity_token(self) -> str | None:
        """The OAuth2 refresh token, when these are one (user ``<token>``)."""
        return self.secret if self.user == IDENTITY_USER else None


@dataclass(frozen=True)
class Found:
    """What the lookup found for one host: credentials (None: anonymous), and from where."""

    credentials: Credentials | None
    source: str  # e.g. 'credsStore "pass" in /home/a/.docker/config.json', for messages
    helper: str | None = None  # docker-credential-NAME when a helper was asked
    setting: str | None = None  # where the config.json names it, e.g. 'credsStore in /x/config.json'


def auth_key(key: str) -> str:
    """A config.json key as HOST[:PORT]: docker also writes ``https://host/v1/`` forms."""
    text = key.strip()
    if "://" in text:
        text = urllib.parse.urlsplit(text).netloc
    return text.split("/", 1)[0].lower()


def read_config(path: Path) -> dict[str, Any] | None:
    """The config.json at ``path``; None when there is none."""
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"registry auth file {path}: cannot read ({exc.strerror}); fix its mode or "
                          "REGISTRY_AUTH_FILE") from None
    except ValueError:
        raise ConfigError(f"registry auth file {path} is not JSON; fix it (docker's config.json format) or "
                          "point REGISTRY_AUTH_FILE elsewhere") from None
    return doc if isinstance(doc, dict) else None


def from_auths(doc: dict[str, Any], path: Path, host: str) -> Credentials | None:
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if auth_key(str(key)) != host or not isinstance(entry, dict):
            continue
        if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
            return Credentials(IDENTITY_USER, entry["identitytoken"])
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise ConfigError(f"registry auth file {path}: the auth of {key!r} is not base64 of "
                                  "user:password; log in again")
            return Credentials(user, password)
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return Credentials(entry["username"], entry["password"])
    return None


def _helper_for(doc: dict[str, Any], path: Path, host: str) -> tuple[str, str] | None:
    """(helper name, where it is set) for ``host``: credHelpers first, then credsStore."""
    helpers = doc.get("credHelpers")
    name: Any = None
    label = ""
    if isinstance(helpers, dict):
        for key, value in helpers.items():
            if auth_key(str(key)) == host:
                name, label = value, f'credHelpers["{key}"]'
    if not name and doc.get("credsStore"):
        name, label = doc["credsStore"], "credsStore"
    if not name:
        return None
    if not isinstance(name, str) or not _HELPER_NAME.fullmatch(name):
        raise ConfigError(f"registry auth file {path}: {label} is {name!r}, not the NAME of a credential "
                          "helper docker-credential-NAME; fix it")
    return name, f"{label} in {path}"


def run_helper(program: str, where: str, host: str, timeout: float) -> Credentials | None:
    """``program get`` for ``host``: its credentials, or None when it has none for it."""
    exe = shutil.which(program)
    if exe is None:
        raise RegistryAuthError(f"registry {host}: the credential helper {program} ({where}) is not on PATH; "
                                f"install it, or remove it from that file")
    try:
        proc = subprocess.Popen([exe, "get"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise RegistryAuthError(f"registry {host}: the credential helper {exe} cannot be run ({exc.strerror}); "
                                "fix its mode, or remove it from the config.json") from None
    try:
        out, err = proc.communicate(host.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the helper and whatever it started
        except ProcessLookupError:
            pass  # it ended meanwhile
        proc.communicate()
        raise RegistryAuthError(f"registry {host}: the credential helper {program} gave no answer in {timeout:g} s "
                                f"(connect_timeout); check it (a locked keyring?) with `echo {host} | {program} get`"
                                ) from None
    said = (out.decode("utf-8", "replace").strip() or err.decode("utf-8", "replace").strip())
    if proc.returncode != 0:
        if "credentials not found" in said.lower():
            return None  # docker's errCredentialsNotFound: anonymous
        first = said.splitlines()[0][:200] if said else "no message"
        raise RegistryAuthError(f"registry {host}: the credential helper {program} failed (exit {proc.returncode}: "
                                f"{first}); see why with `echo {host} | {program} get`, or `docker login {host}` "
                                "again")
    try:
        doc = json.loads(out)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("Username", ""), str) or not isinstance(
            doc.get("Secret"), str):
        raise RegistryAuthError(f"registry {host}: the credential helper {program} answered no "
                                '{"Username", "Secret"} JSON; fix or replace the helper')
    if not doc["Secret"]:
        return None
    return Credentials(doc.get("Username") or "", doc["Secret"])


def find_credentials(path: Path | None, host: str, timeout: float) -> Found:
    """The credentials for ``host`` by docker's precedence (module docstring)."""
    if path is None:
        return Found(None, "REGISTRY_AUTH_FILE")
    doc = read_config(path)
    if doc is None:
        return Found(None, str(path))
    helper = _helper_for(doc, path, host)
    if helper is not None:
        program = HELPER_PREFIX + helper[0]
        return Found(run_helper(program, helper[1], host, timeout), program, program, helper[1])
    return Found(from_auths(doc, path, host), str(path))
