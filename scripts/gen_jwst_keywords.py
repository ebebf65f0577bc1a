#!/usr/bin/env python
"""Generate crds_fs/engine/data/jwst_keywords.json: JWST FITS keyword -> data-model paths.

crds translates JWST header keywords that do not start with ``META.`` by asking the
stdatamodels schema (``JwstDataModel().find_fits_keyword(KEY)``).  Shipping the answer as a
table keeps stdatamodels (and its import time) out of crds-fs at run time.

Run after upgrading stdatamodels and commit the result::

    python scripts/gen_jwst_keywords.py            # writes the packaged table
    python scripts/gen_jwst_keywords.py --check    # exit 1 if the table is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "crds_fs" / "engine" / "data" / "jwst_keywords.json"


def build_table() -> dict[str, object]:
    """Walk the core JWST schema exactly as stdatamodels' find_fits_keyword does."""
    import stdatamodels
    from stdatamodels.jwst import datamodels
    from stdatamodels.schema import walk_schema

    model = datamodels.JwstDataModel()
    found: dict[str, list[str]] = {}

    def visit(subschema, path, combiner, ctx, recurse):  # noqa: ARG001 - walk_schema API
        if path and path[0] == "extra_fits":
            return True
        keyword = subschema.get("fits_keyword")
        if keyword is not None:
            found.setdefault(keyword, []).append(".".join(path))
        return None

    walk_schema(model.schema, visit, {})
    keywords = {}
    for keyword in sorted(found):
        paths = model.find_fits_keyword(keyword, return_result=True)
        if paths != found[keyword]:
            raise SystemExit(f"schema walk disagrees with find_fits_keyword for {keyword}")
        keywords[keyword] = [path.upper() for path in paths]  # looked up as KEY.upper()
    return {
        "generated_by": "scripts/gen_jwst_keywords.py",
        "stdatamodels_version": stdatamodels.__version__,
        "keywords": keywords,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the file")
    parser.add_argument("--output", type=Path, default=TARGET)
    args = parser.parse_args(argv)
    text = json.dumps(build_table(), indent=1, sort_keys=True) + "\n"
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(json.loads(text)['keywords'])} keywords)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
