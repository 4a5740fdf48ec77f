"""Registry authentication: anonymous, basic credentials from a docker config.json, bearer tokens.

Credentials come from the file ``Settings.registry_auth_file`` names (REGISTRY_AUTH_FILE, else
$DOCKER_CONFIG/config.json, else ~/.docker/config.json), in docker's format:
``{"auths": {"HOST[:PORT]": {"auth": base64("user:password")}}}`` (or ``username``/``password``).
A 401's ``WWW-Authenticate`` says what to do: ``Basic`` resends with those credentials;
``Bearer realm=...,service=...,scope=...`` fetches a token from the realm (which may be on
another host, or relative to the registry) and resends with it. Tokens are kept per scope.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from cachemgr.errors import ConfigError, RegistryAuthError

_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def _fix(host: str, auth_file: Path | None) -> str:
    where = str(auth_file) if auth_file else "REGISTRY_AUTH_FILE"
    return (f"run `docker login {host}` (or podman/skopeo login --authfile), or put "
            f"{{\"auths\": {{\"{host}\": {{\"auth\": \"<base64 user:password>\"}}}}}} in {where} "
            "(REGISTRY_AUTH_FILE / DOCKER_CONFIG)")


def _auth_key(key: str) -> str:
    """A config.json ``auths`` key as HOST[:PORT]: docker also writes ``https://host/v1/`` forms."""
    text = key.strip()
    if "://" in text:
        text = urllib.parse.urlsplit(text).netloc
    return text.split("/", 1)[0].lower()


def load_credentials(path: Path | None, host: str) -> tuple[str, str] | None:
    """(user, password) for ``host`` from a docker config.json; None when there are none."""
    if path is None:
        return None
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
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if _auth_key(str(key)) != host or not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise ConfigError(f"registry auth file {path}: the auth of {key!r} is not base64 of "
                                  "user:password; log in again")
            return user, password
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
    return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace('\\"', '"')
              for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


@dataclass
class Auth:
    """The credentials and tokens for one registry host."""

    host: str
    base: str  # the registry's base URL, for a relative realm
    auth_file: Path | None
    proxy: str | None = None  # the token server is reached the way its registry is
    _creds: tuple[str, str] | None = None
    _loaded: bool = False
    _headers: dict[str, str] = field(default_factory=dict)  # scope key -> Authorization value

    def credentials(self) -> tuple[str, str] | None:
        if not self._loaded:
            self._creds = load_credentials(self.auth_file, self.host)
            self._loaded = True
        return self._creds

    def header(self, scopes: tuple[str, ...]) -> str | None:
        return self._headers.get(" ".join(scopes)) or self._headers.get("*")

    def _basic(self) -> str | None:
        creds = self.credentials()
        if creds is None:
            return None
        return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()

    async def answer(self, session: aiohttp.ClientSession, challenge: str, scopes: tuple[str, ...],
                     refused: bool) -> str:
        """The Authorization value that answers ``challenge`` (a 401's WWW-Authenticate)."""
        scheme, params = parse_challenge(challenge)
        basic = await asyncio.to_thread(self._basic)  # reads the auth file: never on the event loop
        if scheme == "basic":
            if basic is None:
                raise RegistryAuthError(f"registry {self.host} wants a user name and password; "
                                        f"{_fix(self.host, self.auth_file)}")
            if refused:
                raise RegistryAuthError(f"registry {self.host} refused the credentials for {self.host} in "
                                        f"{self.auth_file}; {_fix(self.host, self.auth_file)}")
            self._headers["*"] = basic
            return basic
        if scheme != "bearer" or not params.get("realm"):
            raise RegistryAuthError(f"registry {self.host} asks for authentication cachemgr does not speak "
                                    f"({challenge[:80]!r}); use a registry with basic or token auth")
        if refused:
            raise RegistryAuthError(f"registry {self.host} refused the token it issued for {' '.join(scopes)}"
                                    f"{'' if basic else ' (anonymous)'}; {_fix(self.host, self.auth_file)}")
        token = await self._token(session, params, scopes, basic)
        value = f"Bearer {token}"
        self._headers[" ".join(scopes)] = value
        return value

    async def _token(self, session: aiohttp.ClientSession, params: dict[str, str], scopes: tuple[str, ...],
                     basic: str | None) -> str:
        realm = urllib.parse.urljoin(self.base + "/", params["realm"])  # a relative realm is the registry's
        wanted = list(scopes)
        if params.get("scope") and params["scope"] not in wanted:
            wanted.append(params["scope"])
        query: list[tuple[str, str]] = [("service", params["service"])] if params.get("service") else []
        query += [("scope", s) for s in wanted]
        headers = {"Authorization": basic} if basic else {}
        try:
            async with session.get(realm, params=query, headers=headers, allow_redirects=True,
                                   proxy=self.proxy) as resp:
                if resp.status in (401, 403):
                    who = f"the credentials for {self.host} in {self.auth_file}" if basic else "anonymous access"
                    raise RegistryAuthError(f"token server {realm} refused {who} (HTTP {resp.status}); "
                                            f"{_fix(self.host, self.auth_file)}")
                if resp.status != 200:
                    raise RegistryAuthError(f"token server {realm} answered HTTP {resp.status}; check the "
                                            "registry's auth service")
                doc: Any = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RegistryAuthError(f"token server {realm} failed ({exc}); check that it is reachable") from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(f"token server {realm} gave no token; check the registry's auth service")
        return token
