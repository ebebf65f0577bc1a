"""`crds-fs serve` subcommand(s) (placeholder, filled in by its issue)."""

from __future__ import annotations
