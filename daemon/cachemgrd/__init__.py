"""cachemgrd: the cachemgr daemon (aiohttp service). Depends on the library, never the reverse.

main.py        running it: sockets, signals, sd_notify, start-up and shutdown
app.py         the aiohttp application: the versioned JSON API, metrics, mirror serving
state.py       the primary's state: settings, store, single-flight resolves
hitpath.py     the read-only hit path shared by the primary and its workers
storeio.py     the daemon's store I/O off the event loop: what /v1/health says of stuck calls
mirror_tar.py  a stored model as the tar stream tensorflow_hub expects
immutable.py   blobs and manifests by digest, with the headers any HTTP cache needs (Range, ETag)
watch.py       watchdog adoption, stale hub leftovers, prefetch, periodic sweep and scrub
supervisor.py  the primary's side of workers: start, watch, restart, reload, stop
worker.py      a worker process: answers hits, forwards the rest
forward.py     a worker's relay to the primary
listeners.py   the listening sockets, bound once and shared
frontdoor.py   the TCP front door: client_timeout for request heads and bodies, max_peer_connections
logs.py        logging, configured in one place (text or JSON lines), and the daemon's own log lines
counters.py    counters shared between the primary and its workers
metrics.py     the daemon's counters and their Prometheus text
httperrors.py  the one table from library exceptions to HTTP statuses
systemd.py     sd_notify and LISTEN_FDS
gc_freeze.py   keeping the cyclic GC off the hit path
"""
