"""Registries reached through a real Squid (issue 12): an ``oci://`` upstream's group proxy, the
default ``proxy``, and ``no_proxy``.

Every part is real: Debian's ``docker-registry`` on 127.0.0.1 (tests/support/registry.py),
Debian's ``squid`` with the documented config (tests/support/squid.py), ``cachemgr`` children.
There is no origin (tfhub.dev is rewritten to a port nobody listens on), so a model arrives from
the registry or not at all; Squid's access log says which registry requests went through it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import Cli
from tests.support.daemons import free_port
from tests.support.env import BASE_ENV
from tests.support.registry import LocalRegistry
from tests.support.squid import Squid
from tests.support.suite import Models

HANDLE = "https://tfhub.dev/site/model/1"
TAG = "site/model:1"  # HANDLE's repository and tag under a prefix (docs/oci.md)


@dataclass
class Bed:
    root: Path
    registry: LocalRegistry
    squid: Squid
    env: dict[str, str]
    blobs: set[str]

    def fresh(self, name: str, **env: str) -> Cli:
        return Cli(self.root / name, {**self.env, **env})

    def through_squid(self, since: int) -> list[str]:
        """The URLs of this registry that Squid's access log shows since line ``since``."""
        lines = self.squid.access_lines()[since:]
        return [line.split()[6] for line in lines if len(line.split()) > 6
                and line.split()[6].startswith(f"http://{self.registry.host}/v2/")]

    def mark(self) -> int:
        return len(self.squid.access_lines())


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Iterator[Bed]:
    root = tmp_path_factory.mktemp("oci-proxy")
    env = {**BASE_ENV, "XDG_CONFIG_HOME": str(root / "xdg"), "REGISTRY_AUTH_FILE": str(root / "no-auth.json"),
           "CACHEMGR_MIRRORS": f"https://tfhub.dev/=http://127.0.0.1:{free_port()}/", "CACHEMGR_RETRIES": "0"}
    with LocalRegistry(root / "registry") as registry, Squid() as squid:
        src = Cli(root / "src", env)
        r = src("add", HANDLE, str(models.text_v1))
        assert r.code == 0, r.err
        r = src("push", HANDLE, "--to", registry.url("site"))  # directly: no proxy set
        assert r.code == 0, r.err
        manifest = json.loads(src("info", HANDLE, "--json").out)["manifest"]
        rows = json.loads((src.home / "manifests/sha256" / f"{manifest}.json").read_text())["files"]
        bed = Bed(root, registry, squid, env, {row[3] for row in rows})
        assert bed.through_squid(0) == [], "the push had no proxy to go through"
        yield bed


def _pulled(cli: Cli, *args: str) -> dict[str, object]:
    r = cli("pull", *args, "--json")
    assert r.code == 0, r.err
    result: dict[str, object] = json.loads(r.out)["results"][0]
    assert result["status"] == "pulled" and result["canonical"] == HANDLE, result
    return result


def _blob_gets(urls: list[str]) -> set[str]:
    return {u.rsplit("sha256:", 1)[1] for u in urls if "/blobs/sha256:" in u}


def test_an_oci_upstream_goes_through_its_group_proxy(bed: Bed) -> None:
    config = bed.root / "group.toml"
    config.write_text(f'upstreams = [{{urls = ["{bed.registry.url("site")}"], proxy = "{bed.squid.url}"}}]\n')
    # no_proxy names the registry, but a group's own proxy always applies
    cli = bed.fresh("group", CACHEMGR_CONFIG=str(config), CACHEMGR_NO_PROXY="127.0.0.1")
    since = bed.mark()
    _pulled(cli, HANDLE)
    assert json.loads(cli("info", HANDLE, "--json").out)["source"].startswith("registry oci://")
    urls = bed.through_squid(since)
    assert f"http://{bed.registry.host}/v2/site/site/model/manifests/1" in urls, urls
    assert bed.blobs <= _blob_gets(urls), (bed.blobs, urls)  # every blob the store lacked went through Squid


def test_no_proxy_names_the_registry_so_an_upstream_is_reached_directly(bed: Bed) -> None:
    # HTTP_PROXY is the default proxy; CACHEMGR_NO_PROXY (not the environment's NO_PROXY) exempts
    # the registry: the route is the settings' word, not aiohttp's reading of the environment
    cli = bed.fresh("direct", CACHEMGR_UPSTREAMS=bed.registry.url("site"), HTTP_PROXY=bed.squid.url,
                    CACHEMGR_NO_PROXY="localhost,127.0.0.1")
    since = bed.mark()
    _pulled(cli, HANDLE)
    assert bed.through_squid(since) == []
    # the same upstream without no_proxy goes through the default proxy
    cli = bed.fresh("default", CACHEMGR_UPSTREAMS=bed.registry.url("site"), HTTP_PROXY=bed.squid.url)
    since = bed.mark()
    _pulled(cli, HANDLE)
    assert bed.blobs <= _blob_gets(bed.through_squid(since))


def test_pull_and_push_by_reference_take_the_default_proxy(bed: Bed) -> None:
    cli = bed.fresh("by-ref", CACHEMGR_PROXY=bed.squid.url)
    since = bed.mark()
    _pulled(cli, f"{bed.registry.url('site')}/{TAG}")
    assert bed.blobs <= _blob_gets(bed.through_squid(since))
    since = bed.mark()
    r = cli("push", HANDLE, "--to", bed.registry.url("copy"), "--json")
    assert r.code == 0, r.err
    urls = bed.through_squid(since)
    assert f"http://{bed.registry.host}/v2/copy/site/model/manifests/1" in urls, urls
    # NO_PROXY (read into no_proxy when CACHEMGR_NO_PROXY is unset) sends it direct
    since = bed.mark()
    direct = bed.fresh("by-ref-direct", CACHEMGR_PROXY=bed.squid.url, NO_PROXY=".0.0.1,127.0.0.1")
    _pulled(direct, f"{bed.registry.url('copy')}/{TAG}")
    assert bed.through_squid(since) == []


def test_a_dead_proxy_is_one_line_naming_it(bed: Bed) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cli = bed.fresh("dead-proxy", CACHEMGR_PROXY=dead)
    r = cli("pull", f"{bed.registry.url('site')}/{TAG}")
    assert r.code == 7, (r.code, r.err)
    assert r.err.count("\n") == 1 and "Traceback" not in r.err, r.err
    assert f"through proxy {dead}" in r.err and "the registry and the proxy are up" in r.err, r.err
    assert not list((cli.home / "refs").glob("*.json"))
