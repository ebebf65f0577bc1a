"""The crds_encode payload: JSON -> gzip -> base64, used for large RPC results.

Shared by the client (decoding results and download_metadata) and the server (encoding
them), so both sides agree byte for byte with crds' own encoder.
"""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

ENCODED_KEY = "crds_encoded"
PAYLOAD_KEY = "crds_payload"


def crds_encode(obj: Any) -> dict[str, str]:
    """Wrap *obj* in the compressed envelope crds clients decode transparently."""
    raw = json.dumps(obj).encode("utf-8")
    packed = gzip.compress(raw, mtime=0)
    return {ENCODED_KEY: "1.0", PAYLOAD_KEY: base64.b64encode(packed).decode("ascii")}


def crds_decode(value: Any) -> Any:
    """Undo crds_encode; any value that is not an envelope is returned unchanged."""
    if isinstance(value, dict) and ENCODED_KEY in value:
        packed = base64.b64decode(value[PAYLOAD_KEY])
        return json.loads(gzip.decompress(packed).decode("utf-8"))
    return value
