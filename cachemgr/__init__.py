"""cachemgr: an offline cache manager and mirror for TensorFlow Hub models.

The library, bottom to top (each folder imports only those below it; import-linter checks):

errors.py, units.py, handles.py, signing.py, progress.py,
setting_values.py (the value parsers), settings.py                       the foundation
store/      what is on disk, and the crash-safe primitives that change it
cluster/    many nodes on one shared store: node records, leases, tensorflow_hub's lock files
ingest/     archive or directory -> published model
oci/        OCI registries and image layouts (ModelPack artifacts): push, pull, export
fetch/      network -> ingest (HTTP like tensorflow_hub, upstream daemons, pull)
bundle/     air-gapped bundles
lifecycle/  pins, prune, du, verify, repair, scrub

Above the library, never imported by it: ``cli/`` (the command line), ``client/`` (the shim
and the daemon client) and the daemon, ``cachemgrd`` (in ``daemon/cachemgrd/``).
"""

__version__ = "0.1.0"
