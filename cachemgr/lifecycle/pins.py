"""Pins as policy: pin, unpin, their states, the upstream check, and what the daemon prefetches.

The records themselves (``pins/<sha256(handle)>.json``) are ``cachemgr.store.pins``. A pin with
no digest is *wanted but missing*: it was pinned while offline and waits for a fetch (the
daemon prefetches ``wanted_handles``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from cachemgr.errors import ConfigError, NotPinnedError, OfflineMissError, UsageError
from cachemgr.handles import parse_handle
from cachemgr.settings import Settings
from cachemgr.store.fs import disk_error
from cachemgr.store.objects import Store
from cachemgr.store.pins import Pin, find_pin, pin_path, read_pins, who_am_i, write_pin
from cachemgr.store.refs import Ref, RefIndex
from cachemgr.units import parse_duration

PinState = Literal["ok", "expired", "missing", "drifted"]


@dataclass(frozen=True)
class PinStatus:
    pin: Pin
    state: PinState
    current: str | None  # the manifest the handle has in the store now
    upstream: Literal["unchanged", "changed", "unknown"] | None = None  # None: not checked
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        doc = self.pin.to_json()
        doc.update(state=self.state, current=self.current, upstream=self.upstream, detail=self.detail)
        return doc


def parse_until(text: str, now: float) -> float:
    """``--until``: an ISO date/datetime (UTC unless it names a zone) or a duration from now.

    A time that is not in the future is refused: a pin that has expired before it is written
    protects nothing, and accepting it would hide the typo.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            seconds = parse_duration(text, "--until")
        except ConfigError:
            raise UsageError(
                f"--until {text!r} is neither a date (2025-12-31, 2025-12-31T18:00) nor a duration (30d)"
            ) from None
        if seconds <= 0:
            raise UsageError(f"--until {text!r} is not in the future; give a duration such as 30d") from None
        return now + seconds
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.timestamp() <= now:
        raise UsageError(f"--until {text!r} is in the past ({format_time(moment.timestamp())}); "
                         "give a later date or a duration such as 30d")
    return moment.timestamp()


def format_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


@dataclass(frozen=True)
class PinOutcome:
    pin: Pin
    action: Literal["pinned", "fetched", "wanted"]
    error: str = ""
    previous: Pin | None = None  # the pin this one replaced
    changes: tuple[str, ...] = ()  # what re-pinning changed, in words ("until ... -> ...")
    kept: tuple[str, ...] = ()  # what re-pinning kept from the previous pin

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "error": self.error, "pin": self.pin.to_json(),
                "repinned": self.previous is not None, "changes": list(self.changes), "kept": list(self.kept)}


def _describe(previous: Pin, new: Pin) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What changed from ``previous`` to ``new`` and what stayed, for the operator."""
    def until(p: Pin) -> str:
        return format_time(p.until) if p.until else "no expiry"

    def digest(p: Pin) -> str:
        return f"sha256:{p.digest[:12]}" if p.digest else "none (wanted)"

    changes: list[str] = []
    kept: list[str] = []
    for name, old, now in (("until", until(previous), until(new)), ("reason", repr(previous.reason), repr(new.reason)),
                           ("digest", digest(previous), digest(new))):
        if old != now:
            changes.append(f"{name} {old} -> {now}")
        elif name != "digest" and (previous.until if name == "until" else previous.reason):
            kept.append(f"{name} {old}")
    return tuple(changes), tuple(kept)


def _fetch(settings: Settings, store: Store, text: str) -> Ref:
    from cachemgr.fetch.pull import pull_handles  # aiohttp: only pinning a missing handle needs it

    (result,) = pull_handles(settings, store, [text])
    if result.error is not None:
        raise result.error
    assert result.ref is not None
    return result.ref


def pin(
    settings: Settings, store: Store, text: str, *, reason: str | None = None, until: float | None = None,
    now: float | None = None, who: str | None = None,
) -> PinOutcome:
    """Pin ``text``; fetch it first if it is not stored (offline: record it as wanted).

    Pinning again keeps the earlier ``until`` and ``reason`` unless new ones are given; the
    outcome says what changed. An ``until`` that is not in the future is refused.
    """
    now = time.time() if now is None else now
    parse_handle(text)  # a bad handle fails before anything is written
    if until is not None and until <= now:
        raise UsageError(f"--until {format_time(until)} is in the past; give a later date or a duration such as 30d")
    previous = find_pin(store, text)
    if previous is not None:
        reason = previous.reason if reason is None else reason
        until = previous.until if until is None else until
        if previous.expired(now) and until is not None and until <= now:
            until = None  # an expired pin renewed without --until: it holds again, with no expiry
    reason = reason or ""
    ref = RefIndex(store).lookup(text)
    action: Literal["pinned", "fetched", "wanted"] = "pinned"
    error = ""
    if ref is None:
        try:
            ref = _fetch(settings, store, text)
            action = "fetched"
        except OfflineMissError as err:
            action, error = "wanted", str(err)
    who = who or who_am_i()
    if ref is None:
        new = Pin(parse_handle(text).canonical, text, None, who, now, reason, until)
    else:
        new = Pin(ref.handle, text, ref.manifest, who, now, reason, until, ref.etag, ref.x_goog_hash)
    write_pin(store, new)
    if previous is None:
        return PinOutcome(new, action, error)
    changes, kept = _describe(previous, new)
    return PinOutcome(new, action, error, previous, changes, kept)


def unpin(store: Store, text: str) -> Pin:
    found = find_pin(store, text)
    if found is None:
        raise NotPinnedError(f"{text} is not pinned; `cachemgr pins` lists the pins")
    try:
        pin_path(store, found.handle).unlink()
    except FileNotFoundError:
        pass  # another host unpinned it at the same moment
    except OSError as exc:
        raise disk_error(exc, pin_path(store, found.handle)) from None
    return found


def refresh_pin(store: Store, found: Pin, ref: Ref) -> Pin:
    """Record the digest a wanted pin got once its handle was fetched (daemon prefetch)."""
    updated = replace(found, digest=ref.manifest, etag=ref.etag, x_goog_hash=ref.x_goog_hash)
    write_pin(store, updated)
    return updated


def pin_statuses(store: Store, now: float | None = None) -> list[PinStatus]:
    now = time.time() if now is None else now
    index = RefIndex(store)
    out: list[PinStatus] = []
    for p in read_pins(store):
        ref = index.lookup(p.handle)
        current = ref.manifest if ref is not None else None
        if p.expired(now):
            out.append(PinStatus(p, "expired", current,
                                 detail=f"expired {format_time(p.until or 0)}; no longer protects the model"))
        elif ref is None:
            out.append(PinStatus(p, "missing", None, detail="wanted but missing: pull it or let the daemon fetch it"))
        elif p.digest is not None and ref.manifest != p.digest:
            out.append(PinStatus(p, "drifted", current,
                                 detail=f"stored content changed since pinned (was sha256:{p.digest[:12]})"))
        else:
            out.append(PinStatus(p, "ok", current))
    return out


def failing(statuses: list[PinStatus]) -> list[PinStatus]:
    """The pins ``pins --check`` fails on: expired, missing, changed in the store or upstream."""
    return [s for s in statuses if s.state != "ok" or s.upstream == "changed"]


def wanted_handles(store: Store, now: float | None = None, missing_only: bool = True) -> list[str]:
    """Handles the daemon should prefetch: unexpired pins (by default only those not stored)."""
    return [s.pin.asked for s in pin_statuses(store, now)
            if s.state != "expired" and (s.state == "missing" or not missing_only)]


def with_upstream(settings: Settings, statuses: list[PinStatus]) -> list[PinStatus]:
    """Compare each live pin's recorded ETag/x-goog-hash with what upstream serves now."""
    from cachemgr.fetch.probe import changed, probe_many  # network code only when asked

    live = [s for s in statuses if s.state != "expired" and s.pin.digest is not None]
    probes = probe_many(settings, [s.pin.handle for s in live])
    out: list[PinStatus] = []
    for s in statuses:
        probe = probes.get(s.pin.handle)
        if probe is None:
            out.append(s)
            continue
        verdict = changed(s.pin.etag, s.pin.x_goog_hash, probe)
        if verdict is None:
            out.append(replace(s, upstream="unknown", detail=s.detail or probe.error))
        elif verdict:
            detail = f"upstream content changed since pinned (ETag {s.pin.etag} -> {probe.etag})"
            out.append(replace(s, upstream="changed", detail=detail))
        else:
            out.append(replace(s, upstream="unchanged"))
    return out
