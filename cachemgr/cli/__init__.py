"""The ``cachemgr`` command line: parsing and printing only; the work is in the library.

main.py       the click group and its global options; each command's module loads when it runs
models.py     pull, add, env, ls, info, path
lifecycle.py  pin, unpin, pins, prune, verify, du, rm
cluster.py    nodes
bundle.py     export, import, inventory, keygen
oci.py        push (to an OCI registry; pull, export and import take registries and layouts too)
daemon.py     daemon, status, shim install / uninstall
util.py       the Command class (errors -> one line + exit code), with_store, option types
output.py     tables for people, JSON for scripts
complete.py   shell completion of the handles in the store (subcommands and options: click)
"""
