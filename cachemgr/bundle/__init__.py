"""Air-gapped bundles: one ``.tar.zst`` (or numbered parts) that carries models across a gap.

format.py     the bundle manifest (first tar member) and the inventory document
tarstream.py  the few tar records a bundle uses, written and read strictly
container.py  zstd framing: the end trailer and the numbered-part header
plan.py       pure planning: what to pack, what an import adds
export.py     writing a bundle
importer.py   reading, verifying and publishing a bundle
"""
