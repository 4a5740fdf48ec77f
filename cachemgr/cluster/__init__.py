"""Many nodes on one shared store (NFS, Lustre, GPFS, GlusterFS).

Only rename within a directory, ``O_EXCL`` create and a fresh ``stat`` after a rename are
relied on: never flock, fcntl locks, mmap or SQLite. Leases only avoid duplicate work;
correctness never depends on them.

lease.py      leases: take (O_EXCL), renew (a thread), stale, take over; the one lease parser
exclusive.py  store-wide work one node at a time (prune, rm) under a renewed lease
nodes.py      node records and heartbeats (``nodes/<id>.json``); the one node-record parser
hublock.py    tensorflow_hub's ``<sha1>.lock`` files in the view while a fetch runs
"""
