"""Best-reference answering, in one place: used by the CLI, the API, the mount and the server.

* `headers`   — dataset headers from FITS/ASDF files (bounded; never reads data), dataset
  names and IDs.
* `sources`   — where the engine gets mapping text (a folder, a cache root, the fetcher).
* `resolver`  — the answerers and their rules: `LocalAnswerer` (the engine over a mapping
  source), `RemoteAnswerer` (a server: batching by ``max_bestrefs_per_rpc``, crds'
  client-side bad-file checks, dataset headers by ID), `BestrefsResolver` (both over the
  crds-fs cache: auto with fallback and the persistent answer cache), `Outcome`, and the
  context words (``operational``/``latest``).
* `registry`  — `BestrefsView`: the datasets of a mount's `bestrefs/` directory.

Nothing here imports from `crds_fs.cli` or `crds_fs.api`; they import from here.
"""
