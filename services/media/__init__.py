"""Media service: the content repository (uploads, remote media, thumbnails).

Content is stored once per distinct content in a content-addressed file store
(``files.py``) under ``media_store_path``; which media id names which file is
in PostgreSQL (``storage.py``). ``local.py`` takes uploads and reserved ids,
``remote.py`` fetches other servers' media over federation into a bounded
cache, ``thumbnails.py`` (with ``imaging.py``, Pillow in threads) makes
thumbnails. Content moves in chunks end to end: from the uploader into the
store, from the store to the gateway's HTTP answer, from a remote into the
store; no file is ever held whole in memory.

Shards on: nothing. Calls reach the replicas round robin and any replica
serves any media (the store is shared); fetching one remote media is one
request over every replica (an advisory lock per media), and a download
waiting for a pending upload sees it whichever replica took it.
"""
