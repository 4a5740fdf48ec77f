"""Test support for cachemgr: real tiny SavedModels, TF Hub archives, a fake origin.

- ``tests.support.models``: ``build_mymul``, ``build_text_embedding``, ``build_big_model``
  (TensorFlow imported lazily) and, re-exported, the archive helpers.
- ``tests.support.archives``: ``make_archive``/``archive_bytes`` and hostile/broken archives.
- ``tests.support.origin``: ``FakeOrigin``, a tfhub.dev -> Kaggle -> signed GCS fake server
  (its catalog, routes, faults and records in ``origin_*``).

The rest (``env``, ``cli``, ``suite``, ``bundles``, ``lifecycle``, ``daemons``, ``hostile``) is
imported by module; tests/README.md lists every module.
"""

from __future__ import annotations

from .archives import (
    HTML_ERROR_PAGE,
    LONG_ASSET_NAME,
    Member,
    archive_bytes,
    archive_members,
    bomb_archive,
    corrupt_crc_archive,
    hostile_absolute_path,
    hostile_chardev,
    hostile_dotdot,
    hostile_fifo,
    hostile_hardlink,
    hostile_symlink,
    html_error_page,
    long_names_archive,
    make_archive,
    many_entries_archive,
    missing_shard_archive,
    no_saved_model_archive,
    tar_bytes,
    truncated_archive,
)
from .models import (
    DEFAULT_VOCAB,
    build_big_model,
    build_mymul,
    build_text_embedding,
    vocab_file_bytes,
)
from .origin import FakeOrigin, Request

__all__ = [
    "DEFAULT_VOCAB",
    "HTML_ERROR_PAGE",
    "LONG_ASSET_NAME",
    "FakeOrigin",
    "Member",
    "Request",
    "archive_bytes",
    "archive_members",
    "bomb_archive",
    "build_big_model",
    "build_mymul",
    "build_text_embedding",
    "corrupt_crc_archive",
    "hostile_absolute_path",
    "hostile_chardev",
    "hostile_dotdot",
    "hostile_fifo",
    "hostile_hardlink",
    "hostile_symlink",
    "html_error_page",
    "long_names_archive",
    "make_archive",
    "many_entries_archive",
    "missing_shard_archive",
    "no_saved_model_archive",
    "tar_bytes",
    "truncated_archive",
    "vocab_file_bytes",
]
