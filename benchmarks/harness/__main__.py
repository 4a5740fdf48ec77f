"""``python -m benchmarks.harness --child {build,serve} ARGS...``: the harness's own children
(see ``models``), run from the checkout's root."""

from __future__ import annotations

import sys

from .children import dispatch_child
from .models import CHILDREN


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["--child"] or len(argv) < 2:
        raise SystemExit(f"usage: python -m benchmarks.harness --child {{{','.join(CHILDREN)}}} ARGS...")
    return dispatch_child(argv[1:], CHILDREN)


if __name__ == "__main__":
    sys.exit(main())
