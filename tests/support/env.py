"""Where the tests run from: the checkout (``REPO``) and the environment every child process starts from."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Environment every cachemgr / TensorFlow child process starts from: no proxies from
# the CI machine, quiet TensorFlow, tf-keras as tf.keras.
BASE_ENV = {
    k: v for k, v in os.environ.items()
    if not k.upper().endswith("_PROXY") and not k.startswith(("CACHEMGR_", "TFHUB_"))
}
BASE_ENV.update(TF_CPP_MIN_LOG_LEVEL="3", TF_USE_LEGACY_KERAS="1", PYTHONPATH=str(REPO))
