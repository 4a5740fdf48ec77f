"""plan_prune is a pure function of a StoreScan and a PrunePolicy: tested on synthetic scans."""

from __future__ import annotations

from cachemgr.lifecycle.prune_plan import PrunePolicy, plan_prune, series_of
from cachemgr.lifecycle.scan import ManifestRecord, ModelRecord, StoreScan, TempRecord
from cachemgr.store.pins import Pin

NOW = 1_000_000_000.0
DAY = 86400.0
OLD = NOW - 30 * DAY


def sha(n: int) -> str:
    return f"{n:064x}"


def model(handle: str, digest: str, *, used: float | None = None, fetched: float = OLD,
          aliases: tuple[str, ...] = ()) -> ModelRecord:
    return ModelRecord(handle, digest, (handle, *aliases), 0, fetched, fetched, used)


def snapshot(models: list[ModelRecord], manifests: dict[str, list[tuple[int, int]]], *,
             pins: tuple[Pin, ...] = (), loose: dict[int, tuple[int, float]] | None = None,
             temps: tuple[TempRecord, ...] = (), disk_free: int | None = None,
             young: set[str] = frozenset()) -> StoreScan:  # type: ignore[assignment]
    recs = {d: ManifestRecord(d, tuple((sha(b), size) for b, size in blobs), NOW if d in young else OLD)
            for d, blobs in manifests.items()}
    blobs = {sha(b) for blobs in manifests.values() for b, _ in blobs}
    loose_map = {sha(b): v for b, v in (loose or {}).items()}
    blobs |= set(loose_map)
    return StoreScan(NOW, tuple(models), recs, {d: OLD for d in manifests}, frozenset(blobs), loose_map,
                         pins, temps, disk_free)


def pin(handle: str, *, until: float | None = None, digest: str | None = None) -> Pin:
    return Pin(handle, handle, digest, "ann@node1", OLD, "paper", until)


H = "https://tfhub.dev/google/m{}/1"


def three_models() -> StoreScan:
    # m0 and m1 share blob 100 (the vocabulary); each has a unique blob too.
    return snapshot(
        [model(H.format(0), "d0", used=NOW - 3 * DAY), model(H.format(1), "d1", used=NOW - 2 * DAY),
         model(H.format(2), "d2", used=NOW - 1 * DAY)],
        {"d0": [(100, 50), (1, 1000)], "d1": [(100, 50), (2, 2000)], "d2": [(3, 4000)]},
    )


def test_max_size_evicts_lru_and_counts_only_unshared_bytes() -> None:
    snap = three_models()
    plan = plan_prune(snap, PrunePolicy(max_size=6050, grace=3600), NOW)
    assert plan.size_before == 7050
    assert [e.handle for e in plan.evict] == [H.format(0)]
    assert plan.evict[0].frees == 1000  # blob 100 is still used by m1
    assert plan.size_after == 6050
    plan = plan_prune(snap, PrunePolicy(max_size=4500), NOW)
    assert [e.handle for e in plan.evict] == [H.format(0), H.format(1)]
    assert plan.evict[1].frees == 2050 and plan.size_after == 4000 <= 4500
    assert sorted(plan.blobs) == sorted([sha(1), sha(2), sha(100)])
    assert sorted(plan.manifests) == ["d0", "d1"]


def test_pins_by_alias_and_digest_protect_and_expired_pins_do_not() -> None:
    snap = three_models()
    alias_pin = pin("https://www.kaggle.com/models/google/m0/tf2/m0/1")
    models = list(snap.models)
    models[0] = model(H.format(0), "d0", used=NOW - 3 * DAY, aliases=(alias_pin.handle,))
    snap = snapshot(models, {"d0": [(100, 50), (1, 1000)], "d1": [(100, 50), (2, 2000)], "d2": [(3, 4000)]},
                    pins=(alias_pin, pin(H.format(1), until=NOW - 1)))
    plan = plan_prune(snap, PrunePolicy(max_size=0), NOW)
    assert [e.handle for e in plan.evict] == [H.format(1), H.format(2)]
    assert any(p.handle == H.format(0) and "pinned by ann@node1" in p.reason for p in plan.protected)
    assert plan.unmet and plan.size_after == 1050


def test_grace_protects_recent_use_and_recent_writes() -> None:
    snap = snapshot([model(H.format(0), "d0", used=NOW - 60), model(H.format(1), "d1", fetched=NOW - 60),
                     model(H.format(2), "d2")], {"d0": [(1, 10)], "d1": [(2, 10)], "d2": [(3, 10)]})
    plan = plan_prune(snap, PrunePolicy(max_size=0, grace=3600), NOW)
    assert [e.handle for e in plan.evict] == [H.format(2)]
    reasons = {p.handle: p.reason for p in plan.protected}
    assert "within the grace period" in reasons[H.format(0)]
    assert "in flight" in reasons[H.format(1)]
    assert [e.handle for e in plan_prune(snap, PrunePolicy(max_size=0, grace=0), NOW).evict] == [
        H.format(2), H.format(0), H.format(1)]  # LRU; equal last activity: by handle


def test_unused_for_and_keep_versions() -> None:
    v = "https://tfhub.dev/google/text/{}"
    snap = snapshot([model(v.format(1), "a"), model(v.format(2), "b", used=NOW - 2 * DAY),
                     model(v.format(10), "c", used=NOW - 2 * DAY), model(H.format(0), "d", used=NOW - 9 * DAY)],
                    {"a": [(1, 1)], "b": [(2, 1)], "c": [(3, 1)], "d": [(4, 1)]})
    plan = plan_prune(snap, PrunePolicy(keep_versions=2), NOW)
    assert [e.handle for e in plan.evict] == [v.format(1)]  # 10 and 2 are the newest (numeric order)
    plan = plan_prune(snap, PrunePolicy(unused_for=7 * DAY), NOW)
    assert [e.handle for e in plan.evict] == [v.format(1), H.format(0)]
    assert "unused for" in plan.evict[0].reason
    assert series_of(v.format(10)) == ("https://tfhub.dev/google/text", 10)


def test_min_free_evicts_until_enough_would_be_free() -> None:
    snap = three_models()
    snap = StoreScan(**{**snap.__dict__, "disk_free": 500})
    plan = plan_prune(snap, PrunePolicy(min_free=2000), NOW)
    assert [e.handle for e in plan.evict] == [H.format(0), H.format(1)]  # 1000 is not enough, 3050 is
    assert plan_prune(snap, PrunePolicy(min_free=400), NOW).evict == ()


def test_content_touched_since_a_running_import_began_is_kept_with_its_model() -> None:
    """An import re-publishing a model touches its snapshot and manifest before it writes the ref
    again: a prune scanning in between must keep the model, however old its ref (the GlusterFS
    kill loop's lost blobs), and execution must skip whatever was touched since the run began."""
    began = NOW - 30
    snap = snapshot([model(H.format(0), "d0"), model(H.format(1), "d1")], {"d0": [(1, 10)], "d1": [(2, 20)]},
                    temps=(TempRecord("inflight.h.2.b", began, "live"),))
    snap = StoreScan(**{**snap.__dict__, "snapshots": {"d0": NOW - 10, "d1": OLD}})
    plan = plan_prune(snap, PrunePolicy(max_size=0, grace=0), NOW)
    assert [e.handle for e in plan.evict] == [H.format(1)]
    assert [p.handle for p in plan.protected] == [H.format(0)]
    assert plan.horizon == began  # execution keeps what was linked or touched since the import began
    quiet = StoreScan(**{**snap.__dict__, "temps": ()})
    plan = plan_prune(quiet, PrunePolicy(max_size=0, grace=0), NOW)
    assert sorted(e.handle for e in plan.evict) == [H.format(0), H.format(1)] and plan.horizon == NOW


def test_leftovers_wait_for_the_grace_period() -> None:
    temps = (TempRecord("ingest.h.1.a", OLD, "dead"), TempRecord("ingest.h.2.b", OLD + 60, "live"),
             TempRecord("ingest.other.3.c", NOW - 2 * 3600, "foreign"), TempRecord("x.h.4.d", NOW - 60, "dead"))
    orphan, fresh = sha(0xA), sha(0xB)
    snap = snapshot([model(H.format(0), "d0")], {"d0": [(1, 10)], orphan: [(2, 20)], fresh: [(3, 30)]},
                    loose={7: (70, OLD), 8: (80, NOW - 60)}, temps=temps, young={fresh})
    plan = plan_prune(snap, PrunePolicy(grace=3600), NOW)
    assert plan.evict == ()
    assert plan.manifests == (orphan,) and plan.snapshots == (orphan,)
    assert sorted(plan.blobs) == sorted([sha(2), sha(7)])  # not the young loose blob 8, not fresh's 3
    assert plan.temps == ("ingest.h.1.a",)
    assert plan.bytes_to_free == 90


def test_plan_is_pure() -> None:
    snap = three_models()
    policy = PrunePolicy(max_size=100)
    assert plan_prune(snap, policy, NOW) == plan_prune(snap, policy, NOW)
