"""``cachemgr rm``, carried out: the plan's pins first, then the plan as a prune (``prune_exec``)."""

from __future__ import annotations

import os

from cachemgr.cluster.exclusive import exclusive
from cachemgr.lifecycle.prune_exec import PruneResult, execute_prune
from cachemgr.lifecycle.remove_plan import RemovePlan
from cachemgr.progress import Bar
from cachemgr.settings import Settings
from cachemgr.store.fs import disk_error
from cachemgr.store.objects import Store
from cachemgr.store.pins import pin_path


def execute_remove(store: Store, plan: RemovePlan, bar: Bar | None = None) -> PruneResult:
    """Carry out ``plan``: its pins first (a pin's digest keeps content alive), then the prune.

    ``bar`` (a progress bar on a TTY) counts the prune's items, as for ``execute_prune``.
    """
    refusal = plan.refusal()
    if refusal is not None:
        raise refusal
    for pin in plan.unpin:
        try:
            os.unlink(pin_path(store, pin.handle))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise disk_error(exc, pin_path(store, pin.handle)) from None
    return execute_prune(store, plan.prune, bar)


def run_remove(settings: Settings, store: Store, plan: RemovePlan, bar: Bar | None = None) -> PruneResult:
    """``execute_remove`` under the store's prune lease: rm and prune never run at once on a
    shared store (StoreBusyError names the node that holds it)."""
    with exclusive(settings, "prune", "rm"):
        return execute_remove(store, plan, bar)
