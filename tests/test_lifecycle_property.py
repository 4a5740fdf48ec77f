"""Property: over random pull/pin/unpin/use/prune sequences, no pinned model is lost and no ref
points at a missing manifest, blob or snapshot file. In-process (library calls), so it is fast."""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachemgr.errors import NotPinnedError
from cachemgr.handles import parse_handle
from cachemgr.ingest.publish import record_model
from cachemgr.ingest.unpack import ingest_stream
from cachemgr.lifecycle import pins
from cachemgr.lifecycle.prune_exec import execute_prune
from cachemgr.lifecycle.prune_plan import PrunePolicy, plan_prune
from cachemgr.lifecycle.scan import scan
from cachemgr.settings import Settings
from cachemgr.store.manifest import Limits
from cachemgr.store.objects import Store
from cachemgr.store.refs import RefIndex
from cachemgr.store.usage import record_handle_use
from tests.support.lifecycle import consistency_problems
from tests.support.suite import Archives

HANDLES = ["https://tfhub.dev/google/mymul/1", "https://tfhub.dev/google/text-embed/1",
           "https://tfhub.dev/google/text-embed/2", "https://tfhub.dev/google/mymul-copy/7"]
LIMITS = Limits(1 << 30, 10_000)

idx = st.integers(0, len(HANDLES) - 1)
ops = st.one_of(
    st.tuples(st.just("pull"), idx),
    st.tuples(st.just("pin"), idx, st.booleans()),
    st.tuples(st.just("unpin"), idx),
    st.tuples(st.just("use"), idx, st.sampled_from([0.0, 600.0, 7200.0, 10 * 86400.0])),
    st.tuples(st.just("prune"), st.sampled_from([None, 0, 60_000, 10**9]), st.sampled_from([None, 3600.0]),
              st.sampled_from([None, 1]), st.sampled_from([0.0, 3600.0])),
)


class Sources:
    """The archive bytes, with a short repr (hypothesis prints arguments of failing examples)."""

    def __init__(self, archives: Archives) -> None:
        self.data = [archives.mymul, archives.text_v1, archives.text_v2, archives.mymul]

    def __repr__(self) -> str:
        return "Sources(mymul, text_v1, text_v2, mymul)"


@pytest.fixture(scope="module")
def sources(archives: Archives) -> Sources:
    return Sources(archives)


def pull(store: Store, sources: Sources, i: int) -> None:
    data = sources.data[i]
    result = ingest_stream(store, io.BytesIO(data), HANDLES[i], LIMITS)
    record_model(store, parse_handle(HANDLES[i]), result, source="add")


def present(store: Store, handle: str) -> bool:
    return RefIndex(store).lookup(handle) is not None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(ops, min_size=1, max_size=14))
def test_pinned_models_survive_and_refs_stay_complete(sources: Sources, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        store = Store(home)
        store.create()
        offline = Settings(home=home, offline=True)
        pull(store, sources, 0)
        pull(store, sources, 1)
        protected: set[str] = set()  # unexpired pins on models that are stored
        pinned: set[str] = set()  # unexpired pins (stored or wanted)
        for step in steps:
            now = time.time()
            if step[0] == "pull":
                pull(store, sources, step[1])
                if HANDLES[step[1]] in pinned:
                    protected.add(HANDLES[step[1]])
            elif step[0] == "pin":
                handle, expired = HANDLES[step[1]], step[2]
                # an expired pin: made 2 s ago, until 1 s ago (a past until is refused now)
                pins.pin(offline, store, handle, until=now - 1 if expired else None, now=now - 2 if expired else None)
                (pinned.discard if expired else pinned.add)(handle)
                (protected.discard if expired or not present(store, handle) else protected.add)(handle)
            elif step[0] == "unpin":
                try:
                    pins.unpin(store, HANDLES[step[1]])
                except NotPinnedError:
                    pass
                pinned.discard(HANDLES[step[1]])
                protected.discard(HANDLES[step[1]])
            elif step[0] == "use":
                record_handle_use(home, HANDLES[step[1]], when=now - step[2])
            else:
                _, max_size, unused_for, keep, grace = step
                policy = PrunePolicy(max_size=max_size, unused_for=unused_for, keep_versions=keep, grace=grace)
                plan = plan_prune(scan(store), policy, now)
                assert not {e.handle for e in plan.evict} & protected
                result = execute_prune(store, plan)
                assert result.freed_bytes >= 0
                if max_size is not None and not plan.unmet:
                    assert plan.size_after <= max_size
            for handle in protected:
                assert present(store, handle), f"pinned {handle} was lost after {step}"
            assert consistency_problems(home) == [], step
