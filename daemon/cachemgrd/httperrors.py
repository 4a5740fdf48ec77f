"""The one table from library exceptions to HTTP statuses, and the JSON error body."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cachemgr.errors import (
    ArchiveError,
    BundleError,
    CachemgrError,
    ConfigError,
    FetchError,
    HandleError,
    IntegrityError,
    NotCachedError,
    OfflineMissError,
    StoreError,
    UsageError,
    most_specific,
)

HTTP_STATUS: dict[type[BaseException], int] = {
    CachemgrError: 500,
    UsageError: 400,
    ConfigError: 500,
    HandleError: 422,
    NotCachedError: 404,
    OfflineMissError: 404,
    FetchError: 502,
    IntegrityError: 502,
    ArchiveError: 502,
    StoreError: 507,
    BundleError: 422,
}


def status_for(err: BaseException) -> int:
    return most_specific(HTTP_STATUS, err, 500)


def error_body(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, **extra}}


def error_response(err: CachemgrError) -> web.Response:
    extra: dict[str, Any] = {}
    if isinstance(err, FetchError) and err.status is not None:
        extra["upstream_status"] = err.status
    return web.json_response(error_body(err.code, str(err), **extra), status=status_for(err))


def plain_error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(error_body(kind, message), status=status)
