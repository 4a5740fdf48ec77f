"""Fetch: getting models from the network into the store.

http.py      HTTP the way tensorflow_hub fetches (redirects by hand, retries, resume, md5)
lowspeed.py  curl's low-speed rule: a transfer under low_speed_limit for low_speed_time is a stall
probe.py     cheap HEAD probes along the redirect chain (ETag / x-goog-hash)
upstream.py  other cachemgr daemons as sources (directly or through an HTTP proxy such as Squid):
             their refs, manifests and blobs, checked; fetch_from_one dispatches by URL scheme
receive.py   one upstream blob's body in a thread of its own: blocking GET, hashed and written as it comes
upstream_groups.py  which upstream next: groups, random within one, failover, back-off (pure)
coordinate.py  one fetch of a model across the nodes of a shared store: the lease, the waiting
pull.py      ``pull`` and ``add``: the orchestration, and opening the store from settings
"""
