"""Build the TF Hub docs' MyMulModel and pack it as a TF Hub archive (.tar.gz).

Usage: python examples/make_model.py OUT_ARCHIVE
"""

from __future__ import annotations

import sys
import tarfile
import tempfile
from pathlib import Path

import tensorflow as tf


class MyMulModel(tf.train.Checkpoint):
    """A variable times the input, with a regularization loss (the TF Hub docs' example)."""

    def __init__(self, v: float) -> None:
        super().__init__()
        self.v = tf.Variable(v, name="v", trainable=True)
        self.variables = [self.v]
        self.trainable_variables = [self.v]
        self.regularization_losses = [tf.function(input_signature=[])(lambda: 0.001 * self.v**2)]

    @tf.function(input_signature=[tf.TensorSpec(shape=None, dtype=tf.float32)])
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return self.v * x


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(MyMulModel(3.0), tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out, "w:gz") as tar:  # the archive root is the SavedModel root
            for path in sorted(Path(tmp).rglob("*")):
                tar.add(path, arcname=str(path.relative_to(tmp)), recursive=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
