"""One exception hierarchy for the whole library, and its exit-code table.

Every message is one line that names the thing that failed and the fix.
The daemon maps the same classes to HTTP statuses in its own single table.
"""

from __future__ import annotations


class CachemgrError(Exception):
    """Base class: ``str(err)`` is the one-line message shown to operators."""

    code = "error"


class UsageError(CachemgrError):
    """The command line asks for something impossible (e.g. nothing to export)."""

    code = "usage"


class NoStoreError(UsageError):
    """HOME is not a store (a typo'd --home, or nothing pulled yet)."""

    code = "no_store"


class ConfigError(CachemgrError):
    code = "bad_config"


class HandleError(CachemgrError):
    code = "bad_handle"


class NotCachedError(CachemgrError):
    code = "not_cached"


class OfflineMissError(NotCachedError):
    code = "offline_miss"


class FetchError(CachemgrError):
    """The upstream could not deliver (network error, HTTP error status)."""

    code = "upstream_failed"

    def __init__(self, message: str, *, url: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class TruncatedDownloadError(FetchError):
    code = "truncated_download"


class IntegrityError(CachemgrError):
    """Bytes did not match the hash they were promised to have."""

    code = "hash_mismatch"


class ArchiveError(CachemgrError):
    """The archive is not an acceptable model archive."""

    code = "bad_archive"


class NotAnArchiveError(ArchiveError):
    code = "not_an_archive"


class UnsafeArchiveError(ArchiveError):
    code = "unsafe_archive"


class ArchiveLimitError(ArchiveError):
    code = "archive_too_large"


class CorruptArchiveError(ArchiveError):
    code = "corrupt_archive"


class ModelStructureError(ArchiveError):
    code = "bad_savedmodel"


class UnsafeManifestError(UnsafeArchiveError):
    """A model manifest (from an upstream, a bundle, a registry or a shared store) is hostile or inconsistent."""

    code = "unsafe_manifest"


class StoreError(CachemgrError):
    code = "store_error"


class NoSpaceError(StoreError):
    """The filesystem under the store is full (ENOSPC/EDQUOT): nothing partial was kept."""

    code = "no_space"


class StorePermissionError(StoreError):
    """The store (or part of it) is owned by another user or group, or is unsafely writable."""

    code = "store_permission"


class LeaseLostError(StoreError):
    """This process's lease in a shared store vanished or was taken over: its work was abandoned."""

    code = "lease_lost"


class StoreBusyError(StoreError):
    """Another node holds the store-wide lease for this work (prune, rm)."""

    code = "store_busy"


class RegistryError(FetchError):
    """An OCI registry refused or failed a request."""

    code = "registry_failed"


class RegistryAuthError(RegistryError):
    """An OCI registry wants credentials that were not given or were refused."""

    code = "registry_auth"


class ChecksFailedError(CachemgrError):
    """A check command (``pins --check``) found problems; its report was printed."""

    code = "checks_failed"


class BundleError(CachemgrError):
    """A bundle file is unusable: not a bundle, newer format, missing/extra/truncated member or part."""

    code = "bad_bundle"


class NotABundleError(BundleError):
    code = "not_a_bundle"


class BundleFormatError(BundleError):
    code = "bundle_format_too_new"


class TruncatedBundleError(BundleError):
    code = "truncated_bundle"


class MissingPartError(BundleError):
    code = "missing_part"


class BundleIntegrityError(BundleError):
    """A blob or manifest in the bundle does not match the digest the bundle manifest promises."""

    code = "bundle_tampered"


class MissingBaseError(BundleError):
    """A delta bundle needs blobs that neither it nor the receiving store has."""

    code = "missing_base"


class SignatureError(BundleError):
    """Unsigned when a signature is required, signed by an untrusted key, or a bad signature."""

    code = "bad_signature"


class NotPinnedError(NotCachedError):
    code = "not_pinned"


# The one table from exception class to process exit code (most specific class wins).
EXIT_CODES: dict[type[BaseException], int] = {
    CachemgrError: 1,
    UsageError: 2,
    ConfigError: 3,
    HandleError: 4,
    NotCachedError: 5,
    OfflineMissError: 6,
    FetchError: 7,
    TruncatedDownloadError: 7,
    IntegrityError: 8,
    ArchiveError: 9,
    StoreError: 10,
    # 11 and 12 are verify's outcomes (lifecycle.verify.Outcome), not errors; 13: a check
    # command (pins --check) found problems; 20s: bundles
    ChecksFailedError: 13,
    BundleError: 20,
    BundleIntegrityError: 8,
    MissingBaseError: 21,
    SignatureError: 22,
}


def most_specific(table: dict[type[BaseException], int], err: BaseException, default: int) -> int:
    """The entry of ``err``'s nearest class in ``table`` (exit codes, HTTP statuses)."""
    for cls in type(err).__mro__:
        if cls in table:
            return table[cls]
    return default


def exit_code_for(err: BaseException) -> int:
    """Exit code of ``err``: the entry of its nearest class in ``EXIT_CODES``."""
    return most_specific(EXIT_CODES, err, 1)
