"""The public name of the client shim: ``import cachemgr.shim`` (what users and ``.pth`` files write).

The code lives in :mod:`cachemgr.client.shim`; this name is that very module.
"""

import sys

from cachemgr.client import shim as _shim

sys.modules[__name__] = _shim
