#!/usr/bin/env bash
# Quickstart, no internet needed: build a small real model, serve it on loopback the way a
# TF Hub host does, pull it into the default store (~/.cache/cachemgr), stop the server, and
# load it with unchanged tensorflow_hub code from the cache.
set -euo pipefail
export TF_CPP_MIN_LOG_LEVEL=3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The handle names a hub host that does not exist; a mirror rule sends its fetches to the
# loopback server. So the handle (and tensorflow_hub's cache key, its sha1) is the same on
# every run whatever port is free, and running this again finds the model already there.
handle="https://hub.example.invalid/example/mymul/1"
export CACHEMGR_MIRRORS="https://hub.example.invalid/=http://127.0.0.1:$port/"
quiet() {  # TensorFlow's start-up chatter (CUDA probes, oneDNN notes) goes to a log, shown on failure
  "$@" 2>"$work/tf.log" || { cat "$work/tf.log" >&2; return 1; }
}

quiet python "$here/make_model.py" "$work/srv/example/mymul/1"
python -m http.server --bind 127.0.0.1 "$port" --directory "$work/srv" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 50); do python -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break; sleep 0.1; done

cachemgr pull "$handle"
cachemgr ls
kill "$server"; wait "$server" 2>/dev/null || true     # the "hub" is gone from here on

eval "$(cachemgr env)"
echo "TFHUB_CACHE_DIR=$TFHUB_CACHE_DIR"
quiet python - "$handle" <<'PY'
import sys
import tensorflow as tf
import tensorflow_hub as hub

handle = sys.argv[1]
m = hub.load(handle)
print("hub.load(handle)(2.0) =", float(m(tf.constant(2.0))))
layer = hub.KerasLayer(handle + "/", trainable=True)   # trailing slash: another alias, same model
model = tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=[1]), layer])
print("KerasLayer losses:", [float(x) for x in layer.losses], "weights:", [w.name for w in layer.trainable_weights])
PY
