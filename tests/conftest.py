"""Shared fixtures: real SavedModels, a real fake origin, fresh stores, a CLI runner.

Only fixtures live here; what they are built from is in ``tests/support/``, which test
modules import directly (never this file).
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.support.fuzz  # noqa: F401  (registers the hypothesis profiles before --hypothesis-profile is read)
from tests.support.cli import Cli
from tests.support.cluster import SharedStore
from tests.support.daemons import Daemon
from tests.support.env import BASE_ENV
from tests.support.gluster import GlusterBed
from tests.support.origin import FakeOrigin
from tests.support.suite import Archives, Models, build_archives, build_models
from tests.support.users import Site, ensure_users, site_env


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """The docs' MyMulModel and a text embedding in two versions sharing vocab.txt."""
    return build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def archives(models: Models) -> Archives:
    return build_archives(models)


@pytest.fixture(scope="session")
def _origin_server(archives: Archives) -> Iterator[FakeOrigin]:
    with FakeOrigin() as origin:
        origin.add_model("google", "mymul", 1, archives.mymul)
        origin.add_model("google", "text-embed", 1, archives.text_v1)
        origin.add_model("google", "text-embed", 2, archives.text_v2)
        yield origin


@pytest.fixture
def origin(_origin_server: FakeOrigin) -> Iterator[FakeOrigin]:
    _origin_server.reset()
    _origin_server.reset_counters()
    yield _origin_server
    _origin_server.reset()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def cli(home: Path, origin: FakeOrigin, tmp_path: Path) -> Cli:
    env = dict(BASE_ENV, CACHEMGR_MIRRORS=origin.mirrors, CACHEMGR_RETRIES="3", CACHEMGR_BACKOFF="0.05",
               XDG_CONFIG_HOME=str(tmp_path / "xdg-config"))
    return Cli(home, env)


@pytest.fixture(scope="session")
def gluster_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlusterBed]:
    """A 2-brick GlusterFS volume and 5 nodes, each with its own FUSE mount at one path (fails, never skips)."""
    bed = GlusterBed(tmp_path_factory.mktemp("gl"), nodes=5, bricks=2)
    yield bed
    bed.close()


_stores = itertools.count(1)


@pytest.fixture
def shared_store(gluster_bed: GlusterBed, origin: FakeOrigin) -> Iterator[Callable[..., SharedStore]]:
    """``shared_store(lease_timeout=..., node_timeout=...)``: a fresh store on the volume; its daemons stop after."""
    made: list[SharedStore] = []

    def make(**kw: Any) -> SharedStore:
        made.append(SharedStore(gluster_bed, f"s{next(_stores)}", origin.mirrors, **kw))
        return made[-1]

    yield make
    for store in made:
        store.stop_daemons()


@pytest.fixture
def site(origin: FakeOrigin) -> Iterator[Site]:
    """Real users alice and bob (group cmgr-share) and eve, a shared setgid directory for the store (users.py)."""
    shared = Site(ensure_users(), site_env(origin.mirrors))
    yield shared
    shared.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts (append them); each is killed at the end, whatever happened."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop(signal.SIGKILL)
