"""``cachemgr push``: stored models to an OCI registry as ModelPack artifacts.

Per model: its artifact (modelpack.py), then each layer blob the repository lacks (HEAD first;
a cross-repository mount when this run already put that blob in another repository), then
the config, then the manifest under the tag the handle maps to (reference.py). Blobs are
read from the store's files in bounded memory; a registry that already has a blob (shared
between versions or models) is not sent it again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from cachemgr.oci.client import Counts, RegistryClient, default_proxy, make_session
from cachemgr.oci.modelpack import OCI_MANIFEST, build_artifact
from cachemgr.oci.reference import Reference, parse_registry, reference_for
from cachemgr.settings import Settings
from cachemgr.store.objects import Store
from cachemgr.store.refs import RefIndex


@dataclass(frozen=True)
class PushResult:
    handle: str
    reference: Reference
    digest: str  # the artifact manifest's sha256
    blobs: int
    counts: Counts

    def to_json(self) -> dict[str, Any]:
        c = self.counts
        return {"handle": self.handle, "reference": str(self.reference), "digest": f"sha256:{self.digest}",
                "blobs": self.blobs, "uploaded": c.uploaded, "uploaded_bytes": c.uploaded_bytes,
                "present": c.present, "mounted": c.mounted, "resumes": c.resumes}


def _delta(after: Counts, before: Counts) -> Counts:
    return Counts(**{k: getattr(after, k) - getattr(before, k) for k in vars(after)})


async def push_models(settings: Settings, store: Store, target: str, texts: list[str]) -> list[PushResult]:
    """Push each of ``texts`` (stored handles) to ``target`` (``oci://HOST[:PORT]/PREFIX``), in order."""
    registry = parse_registry(target)
    index = RefIndex(store)
    refs = [index.require(t) for t in texts]  # every handle checked before anything is sent
    session = make_session(settings)
    try:
        client = RegistryClient(settings, session, registry.host, default_proxy(settings, registry.host))
        sem = asyncio.Semaphore(settings.concurrency)
        known: dict[str, str] = {}  # blob -> a repository this run put it in (for cross-repo mounts)
        results = []
        for ref in refs:
            manifest = await asyncio.to_thread(store.read_manifest, ref.manifest)
            artifact = build_artifact(manifest, ref)
            where = reference_for(registry, ref.handle)
            repo = where.repository
            before = replace(client.counts)
            async def one(digest: str, size: int, repo: str = repo) -> None:
                async with sem:
                    await client.push_blob(repo, store.blob_path(digest), digest, size, known.get(digest))

            await asyncio.gather(*(one(d, s) for d, s in artifact.layers))
            for digest, _size in artifact.layers:
                known.setdefault(digest, repo)
            await client.push_bytes(repo, artifact.config, artifact.config_digest)
            await client.put_manifest(repo, where.tag, artifact.manifest, OCI_MANIFEST)
            results.append(PushResult(ref.handle, where, artifact.digest, len(artifact.layers),
                                      _delta(client.counts, before)))
        return results
    finally:
        await session.close()


def push_handles(settings: Settings, store: Store, target: str, texts: list[str]) -> list[PushResult]:
    """:func:`push_models`, synchronously (the CLI)."""
    return asyncio.run(push_models(settings, store, target, texts))
