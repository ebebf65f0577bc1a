"""Best-reference answering, in one place: used by the CLI, the API, the mount and the server.

* `headers`   — dataset headers from FITS/ASDF files (bounded; never reads data).
* `sources`   — where the engine gets mapping text (a folder, a cache root, the fetcher).
* `resolver`  — `BestrefsResolver`: remote, local or auto answers, batching, bad-file rules
  and the persistent answer cache.
* `registry`  — `BestrefsView`: the datasets of a mount's `bestrefs/` directory.
"""
