"""The ``cachemgr`` command line: parsing and printing only; the work is in the library.

main.py       the click group, and the store commands (pull, add, ls, info, path, env)
lifecycle.py  pin, unpin, pins, prune, verify, du
bundle.py     export, import, inventory, keygen
daemon.py     daemon, status, shim install / uninstall
util.py       settings from the context, --json, the error -> exit code reporting
output.py     tables for people, JSON for scripts
"""
