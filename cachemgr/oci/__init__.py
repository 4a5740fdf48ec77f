"""OCI registries and image layouts: models as CNCF ModelPack artifacts (docs/oci.md).

reference.py  ``oci://HOST[:PORT]/REPO:TAG`` parsing; the handle -> repository:tag mapping
modelpack.py  a stored model as a ModelPack artifact and back (pure), through the one manifest check
credentials.py docker's credentials for a host: credHelpers, credsStore (helpers run), auths
auth.py       anonymous, basic credentials, the bearer-token flow (identity tokens by OAuth2 POST)
client.py     the registry protocol on aiohttp: HEAD, mount, PUT/PATCH uploads, verified GETs
push.py       ``cachemgr push``: stored models to a registry, only the blobs it lacks
pull.py       an artifact (``pull oci://...`` or an ``oci://`` upstream) into the store, verified
layout.py     OCI image layout directories: export, and import with the checks bundles get
"""
