"""Shared fixtures: real SavedModels, a real fake origin, fresh stores, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.models import archive_bytes
from tests.support.origin import FakeOrigin

REPO = Path(__file__).resolve().parent.parent
VOCAB = ["<unk>", "hello", "world", "cache", "manager", "tensorflow", "hub"]

# Environment every cachemgr / TensorFlow child process starts from: no proxies from
# the CI machine, quiet TensorFlow, tf-keras as tf.keras.
BASE_ENV = {
    k: v for k, v in os.environ.items()
    if not k.upper().endswith("_PROXY") and not k.startswith(("CACHEMGR_", "TFHUB_"))
}
BASE_ENV.update(TF_CPP_MIN_LOG_LEVEL="3", TF_USE_LEGACY_KERAS="1", PYTHONPATH=str(REPO))


@dataclass(frozen=True)
class Models:
    mymul: Path
    text_v1: Path
    text_v2: Path


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """The docs' MyMulModel and a text embedding in two versions sharing vocab.txt."""
    root = tmp_path_factory.mktemp("models")
    script = (
        "import sys; from pathlib import Path\n"
        "from tests.support.models import build_mymul, build_text_embedding\n"
        f"root = Path({str(root)!r}); vocab = {VOCAB!r}\n"
        "build_mymul(root / 'mymul')\n"
        "build_text_embedding(root / 'text1', vocab, version=1)\n"
        "build_text_embedding(root / 'text2', vocab, version=2)\n"
    )
    # Built in a child so that this test process never imports TensorFlow.
    subprocess.run([sys.executable, "-c", script], check=True, env=BASE_ENV, cwd=REPO)
    return Models(root / "mymul", root / "text1", root / "text2")


@dataclass(frozen=True)
class Archives:
    mymul: bytes
    text_v1: bytes
    text_v2: bytes


@pytest.fixture(scope="session")
def archives(models: Models) -> Archives:
    return Archives(
        archive_bytes(models.mymul, "gz"),
        archive_bytes(models.text_v1, "gz"),
        archive_bytes(models.text_v2, "gz"),
    )


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


@dataclass
class Result:
    code: int
    out: str
    err: str


class Cli:
    """Runs the real ``cachemgr`` console entry point in a child process."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env

    def __call__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
        full_env = {**self.env, "CACHEMGR_HOME": str(self.home), **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "cachemgr", *args], env=full_env, capture_output=True,
            text=True, timeout=timeout, cwd=REPO,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(home: Path, origin: FakeOrigin, tmp_path: Path) -> Cli:
    env = dict(BASE_ENV, CACHEMGR_MIRRORS=origin.mirrors, CACHEMGR_RETRIES="3", CACHEMGR_BACKOFF="0.05",
               XDG_CONFIG_HOME=str(tmp_path / "xdg-config"))
    return Cli(home, env)
