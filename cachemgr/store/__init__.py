"""The store: what is on disk under HOME, and the primitives that change it crash-safely.

It imports nothing above it (import-linter enforces this): every other stage reads and
writes the store through these modules.

objects.py     the content-addressed objects: blobs, manifests, snapshots; the store's layout
manifest.py    the manifest of one model version, and the one check every manifest passes
savedmodel.py  the SavedModel structure check, from a file list alone
refs.py        refs (handle -> manifest + provenance) and the alias index
view.py        ``view/<sha1(alias)>`` links: what ``TFHUB_CACHE_DIR`` points at
pins.py        pin records (GC roots) under ``pins/``
usage.py       last-use records under ``uses/``
quarantine.py  corrupt content moved aside under ``quarantine/``
fs.py          unique temps, atomic publish, stale-temp cleanup, disk errors
aio.py         store calls from an event loop, in threads, and the calls stuck too long
faults.py      a test hook: crash or fail at the Nth write or rename (fault_at)
names.py       moving a file aside and back where lookups can lie (a listing is the truth)
fskind.py      how long the filesystem's clients may show stale metadata (for prune's second look)
perms.py       the mode policy (a setgid home is shared by its group), permission checks and errors
"""
