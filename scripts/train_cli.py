#!/usr/bin/env python
"""The original training entry point: ``python scripts/train_cli.py --root-dir DIR --config-path FILE``.

It is a thin alias of ``volgan train --data DIR --config FILE``; any further ``volgan train``
option (``--run-dir``, ``--resume``, ``--set KEY=VALUE``, ``--dry-run`` ...) is passed through.
"""

import argparse
import sys

from volgan.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root-dir", required=True, help="data folder with one sub-folder per class (or a .npz file)")
    parser.add_argument("--config-path", required=True, help="YAML config, e.g. config/default.yaml")
    known, rest = parser.parse_known_args()
    sys.exit(main(["train", "--data", known.root_dir, "--config", known.config_path, *rest]))
