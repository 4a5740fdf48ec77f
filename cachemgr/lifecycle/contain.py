"""Containment: act on a verify report's orders before anything else reads the store again.

Corrupt blobs and manifests are moved into quarantine; every model version the report
retires loses its view links and its snapshot (``store.quarantine``), so tensorflow_hub
misses instead of loading bad bytes, until ``repair`` puts it back.
"""

from __future__ import annotations

from cachemgr.lifecycle.problems import VerifyReport
from cachemgr.store.objects import Store
from cachemgr.store.quarantine import quarantine, take_out_of_service


def contain(store: Store, report: VerifyReport) -> None:
    for order in report.quarantines:
        path = store.blob_path(order.name) if order.kind == "blob" else store.manifest_path(order.name)
        quarantine(store, path, order.kind, order.name, order.reason)
    for retired in report.retirements:
        take_out_of_service(store, retired.digest, retired.aliases, retired.reason)
