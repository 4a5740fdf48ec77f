"""Unchanged tensorflow_hub user code, run by test_offline_hub.py inside `unshare -n`.

It gets the handles on argv and prints one JSON line of observations.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub

mymul_handle, mymul_kaggle, text_handle, origin_host, origin_port = sys.argv[1:6]
out: dict[str, object] = {}

try:
    socket.create_connection((origin_host, int(origin_port)), timeout=2).close()
    out["network"] = "reachable"
except OSError as exc:
    out["network"] = f"unreachable: {exc}"

m = hub.load(mymul_handle)
out["load"] = m(tf.constant([2.0])).numpy().tolist()
out["load_kaggle_alias"] = hub.load(mymul_kaggle)(tf.constant([1.0])).numpy().tolist()

layer = hub.KerasLayer(mymul_handle + "/", trainable=True)
model = tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=[1]), layer])
model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
out["losses"] = [float(x) for x in layer.losses]
out["trainable"] = [w.name for w in layer.trainable_weights]
before = float(layer.trainable_weights[0].numpy())
model.fit(np.array([[1.0], [2.0]], np.float32), np.array([[10.0], [20.0]], np.float32),
          epochs=3, verbose=0)
out["v_before_after"] = [before, float(layer.trainable_weights[0].numpy())]

# Re-export a fine-tuned copy of the loaded object.
obj = hub.load(mymul_handle)
obj.v.assign(5.0)
export_dir = tempfile.mkdtemp()
tf.saved_model.save(obj, export_dir)
out["reexport"] = tf.saved_model.load(export_dir)(tf.constant([2.0])).numpy().tolist()

text = hub.KerasLayer(text_handle, input_shape=[], dtype=tf.string, trainable=True)
emb = text(tf.constant(["hello world", "cache manager"]))
out["text_shape"] = list(emb.shape)
print("RESULT " + json.dumps(out))
