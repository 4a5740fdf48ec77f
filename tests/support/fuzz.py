"""Hypothesis profiles for the fuzz tests: ``ci`` (bounded, the default) and ``long`` (50x more).

Registered when conftest.py imports this module, so that ``--hypothesis-profile=long`` works
(pytest loads the option's profile before it collects the test modules); ``CACHEMGR_FUZZ_PROFILE``
or ``HYPOTHESIS_PROFILE`` set to ``long`` work too. Each property asks ``fuzz(n)`` for its share:
n examples under ``ci``, 50n under ``long``.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, Phase, settings

_COMMON: dict[str, Any] = {
    "deadline": None,
    "print_blob": True,
    "derandomize": False,
    "phases": [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],  # no slow explain
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
settings.register_profile("ci", max_examples=300, **_COMMON)
settings.register_profile("long", max_examples=15_000, **_COMMON)


def _profile_name() -> str:
    """``long`` if asked for (env var, or a loaded profile of that name), else the bounded ``ci``."""
    for var in ("CACHEMGR_FUZZ_PROFILE", "HYPOTHESIS_PROFILE"):
        if os.environ.get(var) in ("ci", "long"):
            return os.environ[var]
    return "long" if settings.get_current_profile_name() == "long" else "ci"


PROFILE = settings.get_profile(_profile_name())
SCALE = PROFILE.max_examples / 300  # per-property counts below are relative to the ci profile


def fuzz(examples: int) -> settings:
    """The active profile with this property's share of examples."""
    return settings(PROFILE, max_examples=max(1, int(examples * SCALE)))


# The files of a minimal valid model (a SavedModel by cachemgr's structure check), for the
# generators that build archives and bundle manifests around them.
MODEL_FILES = {
    "saved_model.pb": b"\x08\x01fake saved model",
    "variables/variables.index": b"index",
    "variables/variables.data-00000-of-00001": b"\x00" * 37,
}
