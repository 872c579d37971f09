#!/usr/bin/env python
"""Write ``config/default.yaml`` and its preset copy from the field descriptions in ``src/volgan/config.py``.

    python scripts/write_config_docs.py          # rewrite both files
    python scripts/write_config_docs.py --check  # exit 1 unless both already hold exactly that text

Run it after changing a config field's docstring (its description) or default. The configuration
reference page needs nothing: the MkDocs hook ``docs/hooks/reference.py`` writes it at build time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from volgan.config import default_yaml

REPO = Path(__file__).resolve().parents[1]
FILES = (REPO / "config" / "default.yaml", REPO / "src" / "volgan" / "presets" / "seed-design.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a file differs")
    args = parser.parse_args(argv)
    text = default_yaml().encode("utf-8")
    stale = [path for path in FILES if not path.is_file() or path.read_bytes() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(REPO)} is stale: run python scripts/write_config_docs.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_bytes(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
