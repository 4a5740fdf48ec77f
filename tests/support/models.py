"""Small, real TensorFlow SavedModels for tests and benchmarks.

TensorFlow is imported lazily inside each builder, so importing this module (for example only
for the archive helpers it re-exports) stays cheap. Building a model costs one TensorFlow
import (a few seconds, once per process) plus well under a second per model.

The models follow the "reusable SavedModel" conventions of TF Hub
(https://www.tensorflow.org/hub/reusable_saved_models): the root object has ``__call__``,
``variables``, ``trainable_variables`` and ``regularization_losses`` attributes, which is what
``hub.KerasLayer(handle, trainable=True)`` looks for.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from .archives import (
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
    truncated_archive,
)

__all__ = [
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
    "truncated_archive",
    "vocab_file_bytes",
    "DEFAULT_VOCAB",
]

DEFAULT_VOCAB: list[str] = ["<unk>", "hello", "world", "cat", "dog", "the", "a", "tensor"]


def _tf() -> Any:
    # tensorflow_hub 0.16 needs Keras 2 (tf-keras); TF >= 2.16 only gives tf.keras = tf_keras
    # when TF_USE_LEGACY_KERAS=1 is set before tf.keras is first touched. Building models
    # does not use Keras, but a later hub.KerasLayer in the same process would.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def build_mymul(path: Path, init: float = 3.0) -> Path:
    """Save the TF Hub docs' ``MyMulModel`` (``y = v * x``) to ``path`` and return ``path``.

    As in https://www.tensorflow.org/hub/tf2_saved_model the root is a ``tf.train.Checkpoint``
    (``tf.Module`` defines ``variables``/``trainable_variables`` as read-only properties, so
    the docs use ``Checkpoint``), with one scalar float32 variable ``v`` (= ``init``), the
    ``variables``/``trainable_variables`` lists, and ``regularization_losses`` holding one
    ``tf.function`` returning ``0.001 * v**2``. ``__call__`` accepts float32 of any shape.

    ``hub.load(handle)(tf.constant([2.0]))`` gives ``[2 * init]``;
    ``hub.KerasLayer(handle, trainable=True)`` has ``v`` in ``trainable_weights`` and one
    entry (``0.001 * init**2``) in ``losses``.
    """
    tf = _tf()

    class MyMulModel(tf.train.Checkpoint):  # type: ignore[misc,name-defined]
        def __init__(self, v_init: float) -> None:
            super().__init__()
            self.v = tf.Variable(v_init, dtype=tf.float32, name="v")
            self.variables = [self.v]
            self.trainable_variables = [self.v]
            self.regularization_losses = [
                tf.function(input_signature=[])(lambda: 0.001 * self.v**2),
            ]

        @tf.function(  # type: ignore[untyped-decorator,misc,unused-ignore]
            input_signature=[tf.TensorSpec(shape=None, dtype=tf.float32)]
        )
        def __call__(self, inputs: Any) -> Any:
            return tf.multiply(inputs, self.v)

    path = Path(path)
    tf.saved_model.save(MyMulModel(float(init)), str(path))
    return path


def _embedding_values(vocab: list[str], version: int, dim: int) -> Any:
    import numpy as np

    digest = hashlib.sha256(("\n".join(vocab) + f"|{version}|{dim}").encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    # One extra row for the out-of-vocabulary bucket.
    return rng.standard_normal((len(vocab) + 1, dim)).astype(np.float32)


def vocab_file_bytes(vocab: list[str]) -> bytes:
    """The exact bytes ``build_text_embedding`` writes to ``assets/vocab.txt``."""
    return "".join(word + "\n" for word in vocab).encode("utf-8")


def build_text_embedding(
    path: Path, vocab: list[str] | None = None, version: int = 1, dim: int = 4
) -> Path:
    """Save a tiny text-embedding SavedModel to ``path`` and return ``path``.

    ``assets/vocab.txt`` holds ``vocab`` one word per line (see ``vocab_file_bytes``; it is
    byte-identical for every ``version``/``dim``), read at load time by a
    ``tf.lookup.StaticVocabularyTable`` (one OOV bucket). The embedding variable
    (``[len(vocab) + 1, dim]`` float32) is seeded from (vocab, version, dim), so different
    versions have different ``variables/`` but equal assets.

    ``__call__(sentences: tf.string [None]) -> float32 [None, dim]``: whitespace-split,
    look up, mean over words (an empty sentence gives zeros).
    Works with ``hub.load`` and ``hub.KerasLayer(h, input_shape=[], dtype=tf.string,
    trainable=True)``.
    """
    tf = _tf()
    words = list(DEFAULT_VOCAB if vocab is None else vocab)
    if not words or any(not w or "\n" in w or "\t" in w or " " in w for w in words):
        raise ValueError("vocab must be non-empty words without whitespace")
    if len(set(words)) != len(words):
        raise ValueError("vocab words must be unique")
    values = _embedding_values(words, version, dim)

    class TextEmbedding(tf.train.Checkpoint):  # type: ignore[misc,name-defined]
        def __init__(self, vocab_path: str) -> None:
            super().__init__()
            self.vocab_file = tf.saved_model.Asset(vocab_path)
            initializer = tf.lookup.TextFileInitializer(
                self.vocab_file,
                key_dtype=tf.string,
                key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
                value_dtype=tf.int64,
                value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            )
            self.table = tf.lookup.StaticVocabularyTable(initializer, num_oov_buckets=1)
            self.embeddings = tf.Variable(values, name="embeddings")
            self.variables = [self.embeddings]
            self.trainable_variables = [self.embeddings]
            self.regularization_losses: list[Any] = []

        @tf.function(  # type: ignore[untyped-decorator,misc,unused-ignore]
            input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string)]
        )
        def __call__(self, sentences: Any) -> Any:
            tokens = tf.strings.split(sentences)  # RaggedTensor [batch, (words)]
            ids = tf.ragged.map_flat_values(self.table.lookup, tokens)
            vectors = tf.ragged.map_flat_values(tf.nn.embedding_lookup, self.embeddings, ids)
            total = tf.reduce_sum(vectors, axis=1)
            count = tf.cast(tokens.row_lengths(), tf.float32)[:, tf.newaxis]
            return total / tf.maximum(count, 1.0)

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="vocab-") as tmp:
        vocab_path = Path(tmp) / "vocab.txt"
        vocab_path.write_bytes(vocab_file_bytes(words))
        tf.saved_model.save(TextEmbedding(str(vocab_path)), str(path))
    return path


def build_big_model(
    path: Path, size_bytes: int, *, seed: int = 0, chunk_bytes: int = 16 * 1024 * 1024
) -> Path:
    """Save a SavedModel whose float32 variables total about ``size_bytes``; return ``path``.

    The weights are seeded ``N(0, 0.05)`` values (like trained weights, gzip shrinks them only
    by ~10%), split into variables of at most ``chunk_bytes`` each. ``__call__(x: float32
    [None]) -> float32 [None]`` returns ``x * sum(first element of every variable)``.
    """
    tf = _tf()
    import numpy as np

    rng = np.random.default_rng(seed)
    remaining = max(4, int(size_bytes)) // 4
    per_chunk = max(1, chunk_bytes // 4)
    arrays: list[Any] = []
    while remaining > 0:
        n = min(per_chunk, remaining)
        arrays.append(rng.standard_normal(n, dtype=np.float32) * np.float32(0.05))
        remaining -= n

    class BigModel(tf.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.weights = [tf.Variable(a, name=f"w{i}") for i, a in enumerate(arrays)]
            self.regularization_losses: list[Any] = []

        @tf.function(  # type: ignore[untyped-decorator,misc,unused-ignore]
            input_signature=[tf.TensorSpec(shape=[None], dtype=tf.float32)]
        )
        def __call__(self, x: Any) -> Any:
            return x * tf.add_n([w[0] for w in self.weights])

    path = Path(path)
    model = BigModel()
    tf.saved_model.save(model, str(path))
    return path
