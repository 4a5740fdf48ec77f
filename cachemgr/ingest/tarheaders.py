"""Caps on tar's extended headers, checked before tarfile reads them into memory.

tarfile reads a PAX header (``x``, ``g``), a GNU long name or long link (``L``, ``K``) whole
into memory, whatever size its header block claims, and follows a chain of them recursively.
A 2 GiB ``path=`` record is two GiB of RAM before any member is checked. ``guarded_tarinfo``
returns a ``TarInfo`` class that tarfile uses for every header (``tarfile.open(tarinfo=...)``):
it looks at the claimed size in the 512-byte header block and refuses, before reading a byte
of it, an extended header over ``MAX_HEADER_BYTES``, more than ``MAX_GLOBAL_BYTES`` of global
PAX headers (which tarfile keeps for the rest of the archive) in one archive, or a chain of
them longer than ``MAX_CHAIN``. GNU sparse members are refused: no model archive needs one,
and tarfile collects their maps without bound, in both forms: type ``S`` with its extension
blocks, and PAX ``GNU.sparse.*`` records (format 1.0 reads a map of any claimed length from the
member's data; 0.0 and 0.1 take ``GNU.sparse.offset``/``numbytes``/``map`` and rewrite the
member's name and size). Those are refused before tarfile reads any map, by the methods it
calls to read one, and any other ``GNU.sparse.*`` key when tarfile applies a PAX header.
"""

from __future__ import annotations

import tarfile
from typing import Any

from cachemgr.errors import ArchiveLimitError, UnsafeArchiveError

MAX_HEADER_BYTES = 1024 * 1024  # a PATH_MAX name and every PAX field fit many times over
MAX_GLOBAL_BYTES = 4 * 1024 * 1024  # global PAX headers of one archive (they add up; git archive writes 52 bytes)
MAX_CHAIN = 8  # extended headers in a row before one member (tar writes at most 3)
_EXTENDED = {tarfile.XHDTYPE: "PAX header", tarfile.XGLTYPE: "global PAX header",
             tarfile.SOLARIS_XHDTYPE: "PAX header", tarfile.GNUTYPE_LONGNAME: "GNU long name",
             tarfile.GNUTYPE_LONGLINK: "GNU long link name"}


class _Budget:
    def __init__(self) -> None:
        self.globals = 0
        self.chain = 0


def guarded_tarinfo(name: str) -> type[tarfile.TarInfo]:
    """A ``TarInfo`` subclass for one archive ``name``, with its own running totals."""
    budget = _Budget()

    class GuardedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tar: tarfile.TarFile) -> Any:
            kind = _EXTENDED.get(self.type)
            if self.type == tarfile.GNUTYPE_SPARSE:
                raise _sparse(name, self)
            if kind is None:
                budget.chain = 0
                return super()._proc_member(tar)  # type: ignore[misc]
            budget.chain += 1
            if self.type == tarfile.XGLTYPE:
                budget.globals += self.size
            if self.size > MAX_HEADER_BYTES:
                raise ArchiveLimitError(f"{name}: a {kind} of {self.size} bytes, over the {MAX_HEADER_BYTES}-byte "
                                        "limit; refused as a possible memory bomb")
            if budget.globals > MAX_GLOBAL_BYTES:
                raise ArchiveLimitError(f"{name}: more than {MAX_GLOBAL_BYTES} bytes of global PAX headers; "
                                        "refused as a possible memory bomb")
            if budget.chain > MAX_CHAIN:
                raise UnsafeArchiveError(f"{name}: more than {MAX_CHAIN} extended tar headers in a row; refused")
            return super()._proc_member(tar)  # type: ignore[misc]

        # A PAX header's sparse map (formats 0.0, 0.1 and 1.0): refused before tarfile parses it.
        def _proc_gnusparse_00(self, member: tarfile.TarInfo, *_args: Any) -> None:
            raise _sparse(name, member)

        _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00

        def _apply_pax_info(self, pax_headers: dict[str, str], encoding: str, errors: str) -> None:
            if any(key.startswith("GNU.sparse.") for key in pax_headers):
                raise _sparse(name, self)
            super()._apply_pax_info(pax_headers, encoding, errors)  # type: ignore[misc]

    return GuardedTarInfo


def _sparse(name: str, member: tarfile.TarInfo) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{name}: member {member.name!r} is a GNU sparse file; refused "
                              "(re-create the archive without --sparse)")
