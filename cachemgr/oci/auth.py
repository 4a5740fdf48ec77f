"""Registry authentication: anonymous, docker's credentials (credentials.py), bearer tokens.

Credentials are looked up once per registry, when a 401 first asks, in a thread (the lookup
reads the config.json and may run a credential helper): credHelpers, then credsStore, then
auths, as docker does. A 401's ``WWW-Authenticate`` says what to do: ``Basic`` resends with
those credentials; ``Bearer realm=...,service=...,scope=...`` fetches a token from the realm
(which may be on another host, or relative to the registry) and resends with it: a GET with the
basic credentials (or anonymous), or, for an identity token, the OAuth2 POST
(``grant_type=refresh_token``) docker uses. Tokens are kept per scope.
"""

from __future__ import annotations

import asyncio
import base64
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from cachemgr.errors import RegistryAuthError
from cachemgr.oci.credentials import Credentials, Found, find_credentials

_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')
CLIENT_ID = "cachemgr"  # the OAuth2 client_id sent with an identity token


def _fix(host: str, found: Found) -> str:
    if found.helper is not None:
        return (f"run `docker login {host}` (it stores them with {found.helper}, set by {found.setting}), or "
                f"give REGISTRY_AUTH_FILE a config.json with an auths entry for {host}")
    return (f"run `docker login {host}` (or podman/skopeo login --authfile), or put "
            f"{{\"auths\": {{\"{host}\": {{\"auth\": \"<base64 user:password>\"}}}}}} in {found.source} "
            "(REGISTRY_AUTH_FILE / DOCKER_CONFIG)")


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
    helper_timeout: float = 30.0  # seconds a credential helper has to answer
    _found: Found | None = None
    _lookup: asyncio.Lock = field(default_factory=asyncio.Lock)  # concurrent 401s ask the helper once
    _headers: dict[str, str] = field(default_factory=dict)  # scope key -> Authorization value

    def found(self) -> Found:
        """The credentials for this host (looked up once; in a thread: it may run a helper)."""
        if self._found is None:
            self._found = find_credentials(self.auth_file, self.host, self.helper_timeout)
        return self._found

    def header(self, scopes: tuple[str, ...]) -> str | None:
        return self._headers.get(" ".join(scopes)) or self._headers.get("*")

    async def answer(self, session: aiohttp.ClientSession, challenge: str, scopes: tuple[str, ...],
                     refused: bool) -> str:
        """The Authorization value that answers ``challenge`` (a 401's WWW-Authenticate)."""
        scheme, params = parse_challenge(challenge)
        async with self._lookup:
            found = await asyncio.to_thread(self.found)  # reads the auth file, runs a helper: never on the loop
        creds = found.credentials
        if scheme == "basic":
            if creds is None:
                none = f" and {found.helper} has none for it" if found.helper else ""
                raise RegistryAuthError(f"registry {self.host} wants a user name and password{none}; "
                                        f"{_fix(self.host, found)}")
            if creds.identity_token is not None:
                raise RegistryAuthError(f"registry {self.host} wants a user name and password, but {found.source} "
                                        f"holds an identity token for it; {_fix(self.host, found)}")
            if refused:
                raise RegistryAuthError(f"registry {self.host} refused the credentials for {self.host} from "
                                        f"{found.source}; {_fix(self.host, found)}")
            basic = _basic(creds)
            self._headers["*"] = basic
            return basic
        if scheme != "bearer" or not params.get("realm"):
            raise RegistryAuthError(f"registry {self.host} asks for authentication cachemgr does not speak "
                                    f"({challenge[:80]!r}); use a registry with basic or token auth")
        if refused:
            raise RegistryAuthError(f"registry {self.host} refused the token it issued for {' '.join(scopes)}"
                                    f"{'' if creds else ' (anonymous)'}; {_fix(self.host, found)}")
        token = await self._token(session, params, scopes, found)
        value = f"Bearer {token}"
        self._headers[" ".join(scopes)] = value
        return value

    async def _token(self, session: aiohttp.ClientSession, params: dict[str, str], scopes: tuple[str, ...],
                     found: Found) -> str:
        realm = urllib.parse.urljoin(self.base + "/", params["realm"])  # a relative realm is the registry's
        wanted = list(scopes)
        if params.get("scope") and params["scope"] not in wanted:
            wanted.append(params["scope"])
        creds = found.credentials
        service = [("service", params["service"])] if params.get("service") else []
        refresh = creds.identity_token if creds else None
        try:
            if refresh is not None:  # docker's OAuth2 form: POST grant_type=refresh_token
                form = [("grant_type", "refresh_token"), ("refresh_token", refresh), ("client_id", CLIENT_ID),
                        *service, ("scope", " ".join(wanted))]
                request = session.post(realm, data=form, allow_redirects=True, proxy=self.proxy)
            else:
                headers = {"Authorization": _basic(creds)} if creds else {}
                request = session.get(realm, params=[*service, *(("scope", w) for w in wanted)], headers=headers,
                                      allow_redirects=True, proxy=self.proxy)
            async with request as resp:
                if resp.status in (401, 403):
                    who = (f"the identity token for {self.host} from {found.source}" if refresh else
                           f"the credentials for {self.host} from {found.source}" if creds else "anonymous access")
                    raise RegistryAuthError(f"token server {realm} refused {who} (HTTP {resp.status}); "
                                            f"{_fix(self.host, found)}")
                if resp.status != 200:
                    raise RegistryAuthError(f"token server {realm} answered HTTP {resp.status}"
                                            f"{' to an identity token' if refresh else ''}; check the registry's "
                                            "auth service")
                doc: Any = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RegistryAuthError(f"token server {realm} failed ({exc}); check that it is reachable") from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(f"token server {realm} gave no token; check the registry's auth service")
        return token


def _basic(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.user}:{creds.secret}".encode()).decode()
