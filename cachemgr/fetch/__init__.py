"""Fetch: getting models from the network into the store.

http.py      HTTP the way tensorflow_hub fetches (redirects by hand, retries, resume, md5)
probe.py     cheap HEAD probes along the redirect chain (ETag / x-goog-hash)
upstream.py  other cachemgr daemons as sources: their refs, manifests and blobs, checked
pull.py      ``pull`` and ``add``: the orchestration, and opening the store from settings
"""
