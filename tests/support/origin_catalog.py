"""The fake origin's catalog: the models it serves, their archive bytes and digests, and the public URLs."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Literal

from .crc32c import HAVE_NATIVE, crc32c

Kind = Literal["tfhub", "kaggle", "gcs", "hosting", "gcscn"]
ArchiveKind = Literal["gcs", "hosting", "gcscn"]
KINDS: tuple[Kind, ...] = ("tfhub", "kaggle", "gcs", "hosting", "gcscn")

TFHUB_URL = "https://tfhub.dev/"
KAGGLE_URL = "https://www.kaggle.com/"
GCS_URL = "https://storage.googleapis.com/"
GCSCN_URL = "https://gcs.tensorflow.google.cn/"
GCS_BUCKET = "kaggle-models-data"

# Without a native crc32c, hashing bigger archives in pure Python is too slow; omit crc32c.
PURE_PY_CRC32C_LIMIT = 16 * 1024 * 1024


class Blob:
    """Archive bytes (in memory or a file) plus lazily computed digests."""

    def __init__(self, data: bytes | Path) -> None:
        self.data = data
        if isinstance(data, Path):
            self.size = data.stat().st_size
        else:
            self.size = len(data)
        md5 = hashlib.md5()
        for chunk in self.iter_range(0, self.size):
            md5.update(chunk)
        self.md5 = md5.digest()
        self.etag = f'"{md5.hexdigest()}"'
        self._crc: str | None = None
        self._crc_done = False
        self.generation = str(time.time_ns() // 1000)
        self.last_modified = formatdate(time.time(), usegmt=True)

    def iter_range(self, start: int, end: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
        """Yield bytes ``[start, end)`` in chunks."""
        if isinstance(self.data, Path):
            with self.data.open("rb") as f:
                f.seek(start)
                pos = start
                while pos < end:
                    b = f.read(min(chunk, end - pos))
                    if not b:
                        return
                    pos += len(b)
                    yield b
        else:
            view = memoryview(self.data)
            for pos in range(start, end, chunk):
                yield bytes(view[pos : min(end, pos + chunk)])

    def read(self, start: int, n: int) -> bytes:
        return b"".join(self.iter_range(start, start + n))

    def crc32c_b64(self) -> str | None:
        if not self._crc_done:
            if HAVE_NATIVE or self.size <= PURE_PY_CRC32C_LIMIT:
                crc = 0
                for chunk in self.iter_range(0, self.size):
                    crc = crc32c(chunk, crc)
                self._crc = base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")
            self._crc_done = True
        return self._crc


@dataclass
class Model:
    publisher: str
    model: str
    version: str
    framework: str
    variation: str
    kaggle_model: str
    id: int
    blob: Blob

    def gcs_path(self) -> str:
        return (
            f"/{GCS_BUCKET}/{self.id}/{self.framework}/{self.variation}/{self.version}/model.tar.gz"
        )

    def kaggle_path(self) -> str:
        return (
            f"models/{self.publisher}/{self.kaggle_model}/frameworks/{self.framework}"
            f"/variations/{self.variation}/versions/{self.version}"
        )


def parse_handle(rest: str) -> tuple[str, str, str] | None:
    """``publisher/model.../version`` -> its three parts (None when it has fewer)."""
    parts = [p for p in rest.strip("/").split("/") if p]
    if len(parts) < 3:
        return None
    return parts[0], "/".join(parts[1:-1]), parts[-1]


class Catalog:
    """The registered models, safe to read from the server thread while a test adds more."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str, str], Model] = {}
        self._next_id = 1000

    def add(
        self,
        publisher: str,
        model: str,
        version: int | str,
        archive: bytes | Path,
        framework: str,
        variation: str | None,
        kaggle_model: str | None,
    ) -> None:
        key = (publisher, model, str(version))
        slug = kaggle_model if kaggle_model is not None else model.replace("/", "-")
        blob = Blob(archive)
        with self._lock:
            old = self._models.get(key)
            if old is not None:
                mid = old.id
            else:
                mid = self._next_id
                self._next_id += 1
            self._models[key] = Model(
                publisher=publisher,
                model=model,
                version=str(version),
                framework=framework,
                variation=variation if variation is not None else slug,
                kaggle_model=slug,
                id=mid,
                blob=blob,
            )

    def get(self, publisher: str, model: str, version: int | str) -> Model:
        """The model (KeyError when it is not registered)."""
        with self._lock:
            return self._models[(publisher, model, str(version))]

    def by_handle(self, rest: str) -> Model | None:
        """The model a ``publisher/model/version`` path names, if any."""
        key = parse_handle(rest)
        with self._lock:
            return self._models.get(key) if key else None

    def by_kaggle(self, p: str, slug: str, fw: str, var: str, v: str) -> Model | None:
        with self._lock:
            for m in self._models.values():
                if (m.publisher, m.kaggle_model, m.variation, m.version) == (p, slug, var, v) and (
                    m.framework.lower() == fw.lower()
                ):
                    return m
        return None

    def by_gcs_path(self, path: str) -> Model | None:
        with self._lock:
            return next((m for m in self._models.values() if m.gcs_path() == path), None)
