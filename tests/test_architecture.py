"""The code's shape, checked: import direction, module size, and the two error tables."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from cachemgrd.httperrors import status_for

import cachemgr.errors as E
from tests.support.env import REPO

# Every CachemgrError subclass and what it means to a script (exit code) and to a client (HTTP).
# A new subclass fails this test until it is given both here, on purpose.
EXPECTED: dict[type[E.CachemgrError], tuple[int, int]] = {
    E.CachemgrError: (1, 500),
    E.UsageError: (2, 400),
    E.NoStoreError: (2, 400),
    E.ConfigError: (3, 500),
    E.HandleError: (4, 422),
    E.NotCachedError: (5, 404),
    E.OfflineMissError: (6, 404),
    E.NotPinnedError: (5, 404),
    E.FetchError: (7, 502),
    E.TruncatedDownloadError: (7, 502),
    E.IntegrityError: (8, 502),
    E.ArchiveError: (9, 502),
    E.NotAnArchiveError: (9, 502),
    E.UnsafeArchiveError: (9, 502),
    E.UnsafeManifestError: (9, 502),
    E.ArchiveLimitError: (9, 502),
    E.CorruptArchiveError: (9, 502),
    E.ModelStructureError: (9, 502),
    E.StoreError: (10, 507),
    E.NoSpaceError: (10, 507),
    E.StorePermissionError: (10, 507),
    E.LeaseLostError: (10, 507),
    E.StoreBusyError: (10, 507),
    E.RegistryError: (7, 502),
    E.RegistryAuthError: (7, 502),
    E.ChecksFailedError: (13, 500),
    E.BundleError: (20, 422),
    E.NotABundleError: (20, 422),
    E.BundleFormatError: (20, 422),
    E.TruncatedBundleError: (20, 422),
    E.MissingPartError: (20, 422),
    E.BundleIntegrityError: (8, 422),
    E.MissingBaseError: (21, 422),
    E.SignatureError: (22, 422),
}


def _subclasses(cls: type[E.CachemgrError]) -> set[type[E.CachemgrError]]:
    out = {cls}
    for sub in cls.__subclasses__():
        out |= _subclasses(sub)
    return out


def test_every_error_class_has_an_exit_code_and_an_http_status() -> None:
    classes = _subclasses(E.CachemgrError)
    assert classes == set(EXPECTED), f"decide exit code and HTTP status for: {classes ^ set(EXPECTED)}"
    for cls in sorted(classes, key=lambda c: c.__name__):
        err = cls("x")
        assert (E.exit_code_for(err), status_for(err)) == EXPECTED[cls], cls.__name__
        assert err.code != "error" or cls is E.CachemgrError, f"{cls.__name__} needs its own code"


def test_import_direction_holds() -> None:
    """import-linter's contracts in pyproject.toml: the library never imports the CLI, daemon or shim;
    stages are layered; no cycles between siblings."""
    beside = Path(sys.executable).parent / "lint-imports"  # this interpreter's venv, even when not activated
    lint = str(beside) if beside.exists() else shutil.which("lint-imports")
    assert lint, "lint-imports (import-linter) is missing: pip install -e '.[test]'"
    r = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_no_module_is_over_400_lines() -> None:
    roots = [REPO / "cachemgr", REPO / "daemon" / "cachemgrd"]
    sizes = {p: len(p.read_text().splitlines()) for root in roots for p in sorted(root.rglob("*.py"))}
    assert len(sizes) > 50
    big = {str(p.relative_to(REPO)): n for p, n in sizes.items() if n > 400}
    assert big == {}


def test_every_folder_lists_its_modules() -> None:
    """Each subpackage's docstring names every module in it, with what it does (bundle/ is the model)."""
    inits = sorted((REPO / "cachemgr").glob("*/__init__.py")) + [REPO / "daemon/cachemgrd/__init__.py"]
    assert len(inits) >= 8
    for init in inits:
        words = {w for line in init.read_text().splitlines() for w in line.split()[:1]}
        modules = {p.name for p in init.parent.glob("*.py")} - {"__init__.py"}
        assert modules <= words, f"{init.relative_to(REPO)} does not describe {sorted(modules - words)}"
