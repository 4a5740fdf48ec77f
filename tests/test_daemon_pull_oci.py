"""The daemon's ``POST /v1/pull`` with ``oci://HOST[:PORT]/REPO:TAG`` (issue 12): one artifact,
as ``cachemgr pull oci://...`` ingests it, against a real registry (Debian docker-registry).

There is no origin (tfhub.dev is rewritten to a port nobody listens on): the model can only
come from the registry. A missing artifact or a malformed reference is that item's one-line
error, as the CLI's is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Cli
from tests.support.daemons import Daemon, free_port
from tests.support.env import BASE_ENV
from tests.support.registry import LocalRegistry
from tests.support.suite import Models

HANDLE = "https://tfhub.dev/site/model/1"


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Iterator[tuple[LocalRegistry, dict[str, str]]]:
    root = tmp_path_factory.mktemp("daemon-oci")
    env = {**BASE_ENV, "XDG_CONFIG_HOME": str(root / "xdg"), "REGISTRY_AUTH_FILE": str(root / "no-auth.json"),
           "CACHEMGR_MIRRORS": f"https://tfhub.dev/=http://127.0.0.1:{free_port()}/", "CACHEMGR_RETRIES": "0"}
    with LocalRegistry(root / "registry") as registry:
        src = Cli(root / "src", env)
        assert src("add", HANDLE, str(models.text_v1)).code == 0
        r = src("push", HANDLE, "--to", registry.url("site"))
        assert r.code == 0, r.err
        yield registry, env


def test_v1_pull_of_an_oci_reference_ingests_the_artifact(pushed: tuple[LocalRegistry, dict[str, str]],
                                                          tmp_path: Path, daemons: list[Daemon]) -> None:
    registry, env = pushed
    d = Daemon(tmp_path / "home", {**env, "CACHEMGR_WORKERS": "1"})
    daemons.append(d)
    d.wait_ready(120)
    ref = f"{registry.url('site')}/site/model:1"
    missing = f"{registry.url('site')}/site/nothing:1"
    status, doc = d.call("POST", "/v1/pull", {"handles": [ref, missing, "oci://no-tag-here"]})
    assert status == 200, doc
    ok, absent, bad = doc["results"]
    assert ok["status"] == "ok" and ok["handle"] == ref and ok["canonical"] == HANDLE, (ok, d.output()[-3000:])
    assert ok["fetched"] is True and Path(ok["path"], "saved_model.pb").is_file()
    assert Path(ok["view"]).resolve() == Path(ok["path"]).resolve()  # the handle's view link, for hub.load
    assert absent["status"] == "failed" and absent["error"]["type"] == "not_cached", absent
    assert "no such artifact" in absent["error"]["message"] and "\n" not in absent["error"]["message"]
    assert bad["status"] == "failed" and "oci://no-tag-here" in bad["error"]["message"], bad
    assert "scheme 'oci' is not supported" not in json.dumps(doc)  # no longer mistaken for a handle
    status, wrong = d.call("POST", "/v1/resolve", {"handle": ref})  # a reference is pulled, not resolved
    assert status == 400 and "/v1/pull" in wrong["error"]["message"], wrong
    # the model is stored under its handle, from the registry; a resolve now is a hit
    status, hit = d.call("POST", "/v1/resolve", {"handle": HANDLE})
    assert status == 200 and hit["fetched"] is False and hit["manifest"] == ok["manifest"], hit
    info = json.loads(Cli(d.home, env)("info", HANDLE, "--json").out)
    assert info["source"] == f"registry {ref}", info
