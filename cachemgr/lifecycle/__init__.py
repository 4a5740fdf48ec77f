"""Lifecycle: what stays, what goes, and proving that what stays is intact.

scan.py         one pass over the store: what it holds, pins and uses (input to planning)
prune_plan.py   pure planning: a policy and a scan give a frozen prune plan
prune_exec.py   carrying out a plan, safe against concurrent pulls and readers
prune_settle.py prune's second look at its trash, once other nodes' filesystem caches caught up
prune_undo.py   rolling back a dead prune's trash before it is collected
recover.py      undoing what dead runs left half-done (the CLI before each command, the daemon at start)
remove_plan.py  ``rm``: pure planning of removing named models (a prune plan of exactly them)
remove_exec.py  ``rm``: carrying out such a plan (its pins, then prune_exec)
pins.py         pin, unpin, pin states and the upstream check
du.py           per-model disk use, from a scan
model_state.py  a model's state (ok, out_of_service, ...) and its fix, for ls, info and du
nodes_report.py ``nodes``: the nodes seen in a shared store, their leases and uses (pure)
problems.py     what verify finds: typed problem kinds, the report, the outcome (pure data)
verify.py       checking every byte: a report, without changing the store
contain.py      carrying out a report's quarantine and out-of-service orders
repair.py       putting damaged models back in service (re-fetch, rebuild, or a bundle)
scrub.py        a verify run (verify, contain, then repair), and the daemon's time-boxed scrub
scrub_state.py  the resumable scrub's progress
hashing.py      fast sha256 of many files
deep_load.py    ``verify --deep``: tf.saved_model.load in a child process
"""
