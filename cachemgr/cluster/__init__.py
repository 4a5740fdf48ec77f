"""Many nodes on one shared store (NFS, Lustre, GPFS, GlusterFS).

Only rename within a directory, ``O_EXCL`` create and a fresh ``stat`` after a rename are
relied on: never flock, fcntl locks, mmap or SQLite. Leases only avoid duplicate work;
correctness never depends on them.
"""
