"""Real tensorflow_hub user code with the shim, driven by test_daemon.py.

argv: mode handle...; prints one line "RESULT <json>".
"""

from __future__ import annotations

import json
import sys
import warnings

mode = sys.argv[1]
handles = sys.argv[2:]
out: dict[str, object] = {}

if mode != "plain":
    import cachemgr.shim  # noqa: F401  (the one line users add, or `cachemgr shim install`)
import tensorflow as tf  # noqa: E402
import tensorflow_hub as hub  # noqa: E402

if mode == "resolve":
    out["paths"] = [hub.resolve(h) for h in handles]
elif mode == "load":
    m = hub.load(handles[0])
    out["call"] = m(tf.constant([2.0])).numpy().tolist()
    layer = hub.KerasLayer(handles[0], trainable=True)
    model = tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=[1]), layer])
    out["losses"] = [float(x) for x in layer.losses]
    out["path"] = hub.resolve(handles[0])
    out["model_layers"] = len(model.layers)
elif mode == "offline_miss":
    try:
        hub.load(handles[0])
        out["error"] = None
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {exc}"
elif mode in ("fallback", "plain"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["call"] = hub.load(handles[0])(tf.constant([2.0])).numpy().tolist()
        out["path"] = hub.resolve(handles[0])
        out["again"] = hub.resolve(handles[-1])
    out["warnings"] = [str(w.message) for w in caught if "cachemgr" in str(w.message)]
print("RESULT " + json.dumps(out))
