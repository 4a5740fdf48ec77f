"""Ingest: an archive stream or a directory becomes a published model, or nothing at all.

decompress.py  sniff gzip / zstd / plain tar and inflate as a stream
unpack.py      the safe tar walk: every member checked, capped, hashed, staged, then published
tarheaders.py  caps on PAX / GNU long-name headers, checked before tarfile reads them
pipe.py        the bounded hand-off of chunks from the download to the ingest thread
publish.py     recording an ingested model: its ref, aliases and view links
"""
