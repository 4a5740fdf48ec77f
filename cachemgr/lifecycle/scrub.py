"""A whole verify run: check the store (verify.py), contain what it found (contain.py), then, when
asked, repair it (repair.py).

``run_verify`` is ``cachemgr verify [--repair]``; ``scrub`` is one slice of the daemon's
background scrub: rate-limited, resumable and time-boxed.
"""

from __future__ import annotations

import logging
import time

from cachemgr.lifecycle.contain import contain
from cachemgr.lifecycle.problems import VerifyReport
from cachemgr.lifecycle.repair import repair
from cachemgr.lifecycle.verify import VerifyOptions, check_store
from cachemgr.settings import Settings
from cachemgr.store.objects import Store

log = logging.getLogger(__name__)


def run_verify(settings: Settings, store: Store, options: VerifyOptions) -> VerifyReport:
    """Verify (and with ``options.repair`` repair) the store or the models named in options."""
    v = check_store(settings, store, options)
    contain(store, v.report)
    if options.repair and v.report.problems:
        repair(settings, store, v.report, v.refs, options.bundle)
    v.report.seconds = time.monotonic() - v.start
    return v.report


def scrub(settings: Settings, store: Store, repair: bool = False) -> VerifyReport:
    """One slice of the daemon's background scrub: rate-limited, resumable, time-boxed."""
    options = VerifyOptions(repair=repair, max_duration=settings.scrub_max_duration, rate=settings.scrub_rate)
    report = run_verify(settings, store, options)
    log.info("scrub: %d blobs, %d bytes checked in %.1f s, %d problem(s)%s", report.blobs, report.bytes,
             report.seconds, len(report.problems), " (partial, continues next time)" if report.partial else "",
             extra={"event": "scrub", "blobs": report.blobs, "bytes": report.bytes,
                    "seconds": round(report.seconds, 3), "problems": len(report.problems), "partial": report.partial})
    return report
