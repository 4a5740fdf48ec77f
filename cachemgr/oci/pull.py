"""Pulling a ModelPack artifact from a registry into the store.

Order, so that nothing is visible before all of it is verified:

1. the artifact manifest (capped) is rebuilt into a store manifest and passes the one check
   every manifest passes (``parse_artifact`` -> ``store.manifest.parse_manifest``, with
   ``Limits.of(settings)``), before anything is written;
2. the config blob is read and verified (it must be the ModelPack config the manifest names);
3. only the blobs this store lacks travel, each no further than its size, verified against its
   sha256 while it streams to a private temp, then adopted (harmless: nothing refers to it yet);
4. then the store manifest, the snapshot, and the ref with the handle and aliases the artifact
   carries (``ingest.publish.record_model``, the path every upstream fetch takes).

Writes run in threads, so the daemon's event loop makes no filesystem call. Each pull has a
registry session of its own (``client.make_session``: no proxy from the environment) and one
route: an ``oci://`` upstream's group proxy (``fetch.upstream_groups`` plans it), else
``client.default_proxy``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import aiohttp

from cachemgr.errors import NotCachedError, UnsafeManifestError
from cachemgr.handles import parse_handle
from cachemgr.ingest.publish import record_model
from cachemgr.ingest.unpack import IngestResult
from cachemgr.oci.client import Counts, RegistryClient, default_proxy, make_session
from cachemgr.oci.modelpack import (
    MAX_CONFIG_BYTES,
    OCI_MANIFEST,
    Model,
    check_config,
    max_manifest_bytes,
    parse_artifact,
)
from cachemgr.oci.reference import Reference, parse_reference, parse_registry, reference_for
from cachemgr.settings import Settings
from cachemgr.store.fs import disk_error, remove_quietly
from cachemgr.store.manifest import Limits
from cachemgr.store.objects import Store
from cachemgr.store.refs import Ref


@dataclass(frozen=True)
class OciPull:
    ref: Ref
    reference: Reference
    counts: Counts


async def _fetch_blob(client: RegistryClient, store: Store, repo: str, digest: str, size: int) -> None:
    staging = await asyncio.to_thread(store.new_temp, "ociblob")
    try:
        target = staging / "blob"
        try:
            fd = await asyncio.to_thread(os.open, target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        except OSError as exc:
            raise disk_error(exc, store.tmp) from None

        async def write(chunk: bytes) -> None:
            try:
                await asyncio.to_thread(os.write, fd, chunk)
            except OSError as exc:
                raise disk_error(exc, store.tmp) from None

        try:
            await client.get_blob(repo, digest, size, write)
        finally:
            await asyncio.to_thread(os.close, fd)
        await asyncio.to_thread(store.adopt_blob, target, digest)
    finally:
        await asyncio.to_thread(remove_quietly, staging)


async def pull_artifact(settings: Settings, store: Store, session: aiohttp.ClientSession, where: Reference,
                        proxy: str | None, expect: str | None = None) -> OciPull | None:
    """Copy the artifact at ``where`` into the store (through ``proxy``, None: directly); None if
    the registry has no such tag.

    ``expect``, a handle, is what an upstream lookup asked for: the artifact must be that model.
    """
    client = RegistryClient(settings, session, where.host, proxy)
    limits = Limits.of(settings)
    name = str(where)
    data = await client.get_manifest(where.repository, where.tag, OCI_MANIFEST, max_manifest_bytes(limits))
    if data is None:
        return None
    model = parse_artifact(data, name, limits)  # the one manifest check, before anything is written
    handle = parse_handle(model.handle)
    if expect is not None and parse_handle(expect).canonical != handle.canonical:
        raise UnsafeManifestError(f"{name}: holds {handle.canonical}, not {expect}; the registry is misfiled "
                                  "or hostile, refused")
    config = await client.read_blob(where.repository, model.config_digest, model.config_size, MAX_CONFIG_BYTES)
    check_config(config, name)
    sizes = {f.sha256: f.size for f in model.manifest.files}
    missing = await asyncio.to_thread(lambda: sorted(d for d in sizes if not store.has_blob(d)))
    sem = asyncio.Semaphore(settings.concurrency)

    async def one(digest: str) -> None:
        async with sem:
            await _fetch_blob(client, store, where.repository, digest, sizes[digest])

    await asyncio.gather(*(one(d) for d in missing))
    ref = await asyncio.to_thread(_publish, store, model, name, len(missing), sum(sizes[d] for d in missing))
    return OciPull(ref, where, client.counts)


def _publish(store: Store, model: Model, name: str, new_blobs: int, new_bytes: int) -> Ref:
    try:
        store.write_manifest(model.manifest)
        snapshot = store.materialize(model.manifest)
        result = IngestResult(model.manifest, model.manifest.digest, snapshot, None, new_blobs, new_bytes)
        return record_model(store, parse_handle(model.handle), result, source=f"registry {name}",
                            url=model.url, chain=list(model.aliases), etag=model.etag,
                            x_goog_hash=model.x_goog_hash, archive_size=model.archive_size)
    except OSError as exc:
        raise disk_error(exc, store.home) from None


async def pull_reference(settings: Settings, store: Store, text: str) -> OciPull:
    """``cachemgr pull oci://HOST[:PORT]/REPO:TAG``: that artifact, or an error naming it."""
    where = parse_reference(text)
    async with make_session(settings) as session:
        got = await pull_artifact(settings, store, session, where, default_proxy(settings, where.host))
    if got is None:
        raise NotCachedError(f"{text}: the registry has no such artifact; check the repository and tag "
                             "(cachemgr push maps handles as docs/oci.md says)")
    return got


async def pull_from_registry(settings: Settings, store: Store, upstream: str, handle_text: str,
                             proxy: str | None) -> OciPull | None:
    """An ``oci://HOST[:PORT]/PREFIX`` upstream, reached through ``proxy`` (its group's route; None:
    directly): the artifact ``handle_text`` maps to, if it is there."""
    where = reference_for(parse_registry(upstream), handle_text)
    async with make_session(settings) as session:
        return await pull_artifact(settings, store, session, where, proxy, expect=handle_text)
