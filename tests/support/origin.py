"""A fake TF Hub origin: tfhub.dev -> www.kaggle.com -> signed storage.googleapis.com URL.

One real aiohttp server on 127.0.0.1 (random free port) in a background thread with its own
event loop. Its parts, by concern:

- ``origin_catalog``: the models it serves (``add_model``) and their archive digests;
- ``origin_routes``: the HTTP routes (``/tfhub``, ``/kaggle``, ``/gcs``, ``/gcscn``, ``/hosting``);
- ``origin_faults``: the knobs, ``fail()``, ``truncate()``, ``hold()``, ``delay()``, ``down``,
  ``wrong_md5``, ``advance()``;
- ``origin_records``: ``requests`` (``Request`` tuples ``(kind, method, path_qs, range, status)``,
  status 0 = connection dropped), ``started(kind)`` / ``completed(kind)`` archive bodies.

By default redirect ``Location`` headers carry the REAL public URLs (https://www.kaggle.com/...,
https://storage.googleapis.com/...), to be mapped back onto this server with ``mirrors``
(``"PUBLIC_PREFIX={base}/kind/ ..."``) or ``rewrite()``. With ``local_redirects=True`` they
point at ``{base}/kaggle/...`` and ``{base}/gcs/...`` so plain urllib / tensorflow_hub follow
them unaided.

Usage::

    with FakeOrigin() as origin:
        origin.add_model("google", "mymul", 1, archive)
        url = f"{origin.base}/tfhub/google/mymul/1?tf-hub-format=compressed"

``reset()`` clears every knob; ``reset_counters()`` clears ``requests`` and the counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
from pathlib import Path
from types import TracebackType

from aiohttp import web

from .origin_catalog import GCS_URL, GCSCN_URL, KAGGLE_URL, TFHUB_URL, Catalog
from .origin_faults import Faults
from .origin_records import Records, Request
from .origin_routes import Routes

__all__ = ["FakeOrigin", "Request"]


class FakeOrigin(Faults, Records):
    """Fake tfhub.dev / Kaggle / GCS origin; see the module docstring.

    The knobs (``Faults``) and the request records (``Records``) are its own attributes and
    methods; the routes (``Routes``) read them from the server thread.
    """

    def __init__(self, *, local_redirects: bool = False) -> None:
        Faults.__init__(self)
        Records.__init__(self)
        self.local_redirects = local_redirects
        self.host = "127.0.0.1"
        self._catalog = Catalog()
        self._routes = Routes(self._catalog, self, self, lambda: self.base, local_redirects, secrets.token_bytes(32))
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeOrigin:
        """Start the server thread (idempotent); returns ``self``."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(128)
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        ready = threading.Event()
        errors: list[BaseException] = []
        self._routes.stopping = False

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(sock, ready))
            except BaseException as e:  # reported to start()
                errors.append(e)
                ready.set()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
                sock.close()

        self._thread = threading.Thread(target=run, name=f"FakeOrigin:{self._port}", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError("FakeOrigin failed to start") from errors[0]
        return self

    async def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._routes.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        self._stop_event = asyncio.Event()
        ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        """Stop the server and join its thread (idempotent)."""
        thread, loop, ev = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        self._routes.stopping = True
        self.release_holds()
        if loop is not None and ev is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ev.set)
        thread.join(15)
        self._thread = None
        self._loop = None
        self._stop_event = None

    def __enter__(self) -> FakeOrigin:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Clear every knob (models stay registered; counters stay, see reset_counters)."""
        self.reset_faults()

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FakeOrigin not started")
        return self._port

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def mirror_map(self) -> dict[str, str]:
        """Public URL prefix -> local prefix."""
        b = self.base
        return {
            TFHUB_URL: f"{b}/tfhub/",
            KAGGLE_URL: f"{b}/kaggle/",
            GCS_URL: f"{b}/gcs/",
            GCSCN_URL: f"{b}/gcscn/",
        }

    @property
    def mirrors(self) -> str:
        """``"https://tfhub.dev/={base}/tfhub/ https://www.kaggle.com/={base}/kaggle/ ..."``."""
        return " ".join(f"{k}={v}" for k, v in self.mirror_map.items())

    def rewrite(self, url: str) -> str:
        """Map a public URL onto this server (identity for other URLs)."""
        for public, local in self.mirror_map.items():
            if url.startswith(public):
                return local + url[len(public) :]
        return url

    def local_handle(self, publisher: str, model: str, version: int | str) -> str:
        """``{base}/tfhub/{publisher}/{model}/{version}`` (usable by hub.load directly)."""
        return f"{self.base}/tfhub/{publisher}/{model}/{version}"

    def hosting_url(self, publisher: str, model: str, version: int | str) -> str:
        return f"{self.base}/hosting/{publisher}/{model}/{version}"

    def gcscn_url(self, publisher: str, model: str, version: int | str) -> str:
        """Local URL of ``https://gcs.tensorflow.google.cn/tfhub-modules/p/m/v.tar.gz``."""
        return f"{self.base}/gcscn/tfhub-modules/{publisher}/{model}/{version}.tar.gz"

    def signed_url(self, publisher: str, model: str, version: int | str) -> str:
        """A fresh signed URL (public form unless ``local_redirects``) for a model."""
        return self._routes.signed_location(self._catalog.get(publisher, model, version))

    # ------------------------------------------------------------------ models

    def add_model(
        self,
        publisher: str,
        model: str,
        version: int | str,
        archive: bytes | Path,
        framework: str = "tensorFlow2",
        variation: str | None = None,
        kaggle_model: str | None = None,
    ) -> None:
        """Register (or replace: new ETag, same id) a model's archive.

        ``model`` may contain ``/`` (like ``imagenet/mobilenet_v2_100_224/classification``);
        the Kaggle slug (``kaggle_model``) then defaults to it with ``/`` -> ``-``, and
        ``variation`` defaults to that slug (= ``model`` for plain names). ``archive`` may
        be a ``Path`` (served from disk; for big archives).
        """
        self._catalog.add(publisher, model, version, archive, framework, variation, kaggle_model)

    def archive(self, publisher: str, model: str, version: int | str) -> bytes:
        """The registered archive bytes."""
        blob = self._catalog.get(publisher, model, version).blob
        return blob.read(0, blob.size)
