"""`crds-fs bestrefs` subcommand(s) (placeholder, filled in by its issue)."""

from __future__ import annotations
