"""The daemon's logging, configured here and nowhere else (the primary and each worker call
``configure``), and the daemon's own lines (one per fetch, failed resolve and mirror serve).

Library and daemon code only log: ``logging.getLogger(__name__)`` and a message whose structured
fields go in ``extra`` (``log.info("fetch %s ...", handle, extra={"handle": handle, "bytes": n})``).
This module decides where the lines go (stderr: journald under systemd) and how they look:

- ``text`` (default): ``cachemgrd: INFO <message>`` (a worker: ``cachemgrd[worker PID]: ...``);
- ``json``: one JSON object per line for log shippers, ``{"ts", "level", "logger", "msg", "pid",
  ...}`` plus every ``extra`` field, and ``exc`` with the traceback when there is one.

The level (``log_level``: debug, info, warning, error) applies to every logger but aiohttp's
access log, which stays off (the daemon logs its own lines per fetch, resolve and mirror serve).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from cachemgr.errors import CachemgrError
from cachemgr.fetch.pull import PullResult
from cachemgr.settings import Settings
from cachemgrd.httperrors import status_for

# The attributes every LogRecord has: whatever else a record carries came in ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                                 "taskName"}


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a log call passed in ``extra``."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ISO 8601), level, logger, msg, pid, the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for key, value in fields_of(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def text_prefix(worker: bool) -> str:
    return f"cachemgrd[worker {os.getpid()}]" if worker else "cachemgrd"


def configure(settings: Settings, worker: bool = False) -> None:
    """Send every log line to stderr in ``settings.log_format`` at ``settings.log_level``
    (called again on reload: the handler is replaced, not added)."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"{text_prefix(worker)}: %(levelname)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# -- the daemon's own lines: one per fetch, failed resolve and mirror serve ------------------------

def _bare(url: str) -> str:
    """``url`` without its query (a signed URL's signature stays out of the logs)."""
    return urllib.parse.urlsplit(url)._replace(query="", fragment="").geturl()


def fetch_done(log: logging.Logger, text: str, result: PullResult, seconds: float) -> None:
    """One line per fetch: the handle, where it came from, the bytes, the seconds, the result."""
    fields: dict[str, Any] = {"event": "fetch", "handle": text, "result": result.status, "seconds": round(seconds, 3)}
    if result.error is not None:
        fields.update(error=result.error.code, reason=str(result.error))
        log.warning("fetch %s failed after %.2f s: %s", text, seconds, result.error, extra=fields)
        return
    ref = result.ref
    assert ref is not None
    upstream = ref.source.startswith("upstream ")
    fields.update(source="upstream" if upstream else "origin",
                  url=ref.source.removeprefix("upstream ") if upstream else _bare(ref.url),
                  bytes=ref.archive_size if ref.archive_size is not None else ref.size, manifest=ref.manifest)
    log.info("fetch %s from %s %s: %s, %d bytes in %.2f s", text, fields["source"], fields["url"], result.status,
             fields["bytes"], seconds, extra=fields)


def resolve_failed(log: logging.Logger, text: str, err: CachemgrError) -> None:
    """One line per failed resolve, at warning for the daemon's own failures (5xx), info for the client's."""
    status = status_for(err)
    fields = {"event": "resolve_failed", "handle": text, "status": status, "error": err.code, "reason": str(err)}
    log.log(logging.WARNING if status >= 500 else logging.INFO, "resolve %s failed (%d %s): %s", text, status,
            err.code, err, extra=fields)


MIRRORED = "cachemgrd.mirrored"  # request key: the handle of the model a mirror download served


class ServeLog(AbstractAccessLogger):
    """aiohttp's access-log hook, used for one line per mirror download (a model as a tar stream):
    the request's path, the model's handle, the peer, the bytes sent (on the wire: the head
    included), the seconds, the status."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        handle = request.get(MIRRORED)
        if handle is None:
            return
        peer = request.remote or "unix"
        result = "ok" if response.status == 200 else str(response.status)
        fields = {"event": "mirror_serve", "path": request.path, "handle": handle, "peer": peer,
                  "bytes": response.body_length, "seconds": round(time, 3), "status": response.status,
                  "result": result}
        self.logger.info("mirror %s (%s) to %s: %s, %d bytes in %.2f s", request.path, handle, peer, result,
                         response.body_length, time, extra=fields)


def runner_options() -> dict[str, Any]:
    """The AppRunner/Server options that route aiohttp's access hook to ServeLog (no other access log)."""
    return {"access_log_class": ServeLog, "access_log": logging.getLogger("cachemgrd.mirror")}
