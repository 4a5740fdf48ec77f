"""Fuzzing the bundle manifest parser (``BundleManifest.from_bytes``): arbitrary bytes, arbitrary
JSON, deep nesting and mutations of a valid document give a BundleManifest or a CachemgrError.

Everything runs in-process, under the hypothesis profiles of tests/support/fuzz.py (``ci`` by
default, bounded; ``long`` with ``--hypothesis-profile=long`` or ``CACHEMGR_FUZZ_PROFILE=long``).
Failing examples print a reproduction blob (``@reproduce_failure``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cachemgr.bundle.format import BundleManifest
from cachemgr.bundle.plan import plan_blobs
from cachemgr.errors import CachemgrError
from cachemgr.store.manifest import FileEntry, Manifest
from cachemgr.store.refs import Ref
from tests.support.fuzz import MODEL_FILES, fuzz


# == the bundle manifest ===========================================================================
def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _model(*extra: str) -> Manifest:
    files = [*MODEL_FILES, "assets/vocab.txt", *extra]
    return Manifest.build([FileEntry(n, 0o644, len(n), _h(n)) for n in files], set())


def valid_bundle_doc() -> dict[str, Any]:
    a, b = _model(), _model("extra")
    refs = [Ref(handle="https://tfhub.dev/g/a/1", manifest=a.digest, aliases=("https://tfhub.dev/g/a/1", "x"),
                size=a.size, files=len(a.files)),
            Ref(handle="https://tfhub.dev/g/b/1", manifest=b.digest, aliases=("https://tfhub.dev/g/b/1",),
                size=b.size, files=len(b.files), etag="e", archive_size=9)]
    manifests = {a.digest: a, b.digest: b}
    bundle = BundleManifest(1.0, "cachemgr fuzz", tuple(refs), manifests, plan_blobs(refs, manifests, None),
                            pins=[{"handle": "https://tfhub.dev/g/a/1"}], base={"created": 0.0})
    doc: dict[str, Any] = json.loads(bundle.to_bytes())
    return doc


VALID_DOC = valid_bundle_doc()
VALID_BYTES = json.dumps(VALID_DOC).encode()

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**400), 10**400), st.floats(),
    st.text(max_size=12), st.sampled_from([_h("x"), "", "cachemgr-bundle", "0" * 64, 1, 0, -1, 1e400, -1e400]),
)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                             max_size=4),
                           max_leaves=20)


def _parse_bundle(data: bytes) -> None:
    try:
        parsed = BundleManifest.from_bytes(data, "fuzz.bundle")
    except CachemgrError:
        return
    assert isinstance(parsed, BundleManifest)
    again = BundleManifest.from_bytes(parsed.to_bytes(), "fuzz.bundle")  # what it writes, it reads back
    assert again.manifests == parsed.manifests and again.blobs == parsed.blobs and again.refs == parsed.refs


def test_valid_bundle_doc_parses() -> None:
    parsed = BundleManifest.from_bytes(VALID_BYTES, "b")
    assert len(parsed.refs) == 2 and len(parsed.manifests) == 2 and parsed.pins is not None


@given(data=st.one_of(st.binary(max_size=300), st.just(VALID_BYTES).flatmap(
    lambda b: st.integers(0, len(b)).map(lambda n: b[:n]))))
@fuzz(500)
def test_bundle_manifest_arbitrary_bytes(data: bytes) -> None:
    _parse_bundle(data)


@st.composite
def bundle_json(draw: st.DrawFn) -> bytes:
    """Arbitrary JSON, shaped like a bundle manifest often enough to get past its first checks."""
    doc = draw(json_values)
    if draw(st.booleans()):
        doc = draw(st.fixed_dictionaries({"kind": st.just("cachemgr-bundle"), "format": st.just(1)},
                                         optional={k: json_values for k in VALID_DOC if k not in ("kind", "format")}))
    depth = draw(st.sampled_from([0, 0, 0, 50, 990, 3000, 100_000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    text = json.dumps(doc)
    if depth:  # deep nesting, inside a field the parser descends into
        key = draw(st.sampled_from(["manifests", "refs", "blobs", "created", "pins"]))
        deep = opener * depth + "1" + closer * depth
        text = json.dumps({**VALID_DOC, key: "@@"}).replace('"@@"', deep)
    return text.encode()


@given(data=bundle_json())
@fuzz(500)
def test_bundle_manifest_arbitrary_json(data: bytes) -> None:
    _parse_bundle(data)


def _pick_path(draw: st.DrawFn, doc: Any) -> tuple[Any, ...]:
    """A path into ``doc`` below its root: each level's keys equally likely (top-level fields as often as
    deep ones); ``kind`` and ``format`` rarely, so that most mutants get past the first checks."""
    path: tuple[Any, ...] = ()
    node = doc
    while isinstance(node, dict | list) and node:
        if len(path) > 0 and draw(st.booleans()):
            break
        keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        if not path and draw(st.integers(0, 9)) != 9:
            keys = [k for k in keys if k not in ("kind", "format")] or keys
        key = draw(st.sampled_from(keys))
        path, node = (*path, key), node[key]
    return path


@dataclass
class Mutated:
    doc: Any
    log: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Mutated({'; '.join(self.log)})"


@st.composite
def mutated_bundles(draw: st.DrawFn) -> Mutated:
    out = Mutated(json.loads(VALID_BYTES))
    for _ in range(draw(st.integers(1, 4))):
        path = _pick_path(draw, out.doc)
        action = draw(st.sampled_from(["replace", "replace", "delete", "duplicate", "insert", "tweak"]))
        if not path:  # an empty document: nothing left to mutate
            break
        parent = out.doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "delete":
            del parent[last]
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(json.loads(json.dumps(parent[last])))
        elif action == "insert" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        elif action == "tweak":
            value = parent[last]
            if isinstance(value, bool):
                parent[last] = not value
            elif isinstance(value, int | float):
                parent[last] = draw(st.sampled_from([value + 1, -value - 1, 0, 10**400, 0.5, 1e400, float("nan")]))
            elif isinstance(value, str):
                parent[last] = draw(st.sampled_from([value[:-1], value + "0", value.upper(), "../" + value, "",
                                                     value + "/", "/" + value, value + "\x00"]))
        out.log.append(f"{action} {list(path)!r}")
    return out


@given(mutated=mutated_bundles())
@fuzz(600)
def test_bundle_manifest_mutations(mutated: Mutated) -> None:
    _parse_bundle(json.dumps(mutated.doc).encode())
