"""MkDocs hook: pages written from one source at build time.

``<!-- cli-reference -->``: the ``--help`` of ``volgan`` and of every subcommand, as the installed
volgan prints it. ``<!-- readme -->``: the repository's README (the site's home page), its links
made relative to ``docs/``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import re
from pathlib import Path

MARKER = "<!-- cli-reference -->"
README = "<!-- readme -->"
ROOT = Path(__file__).resolve().parents[2]


def _cli_reference() -> str:
    os.environ.setdefault("COLUMNS", "100")  # argparse wraps help text at the terminal's width
    from volgan.cli import build_parser

    parser = build_parser()
    parts = [f"## `volgan`\n\n```text\n{parser.format_help().rstrip()}\n```\n"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parts.append(f"## `volgan {name}`\n\n```text\n{sub.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


def _readme() -> str:
    text = (ROOT / "README.md").read_text()
    return re.sub(r"\]\(docs/", "](", re.sub(r"\(docs/([^)]*)\)", r"(\1)", text))


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, _cli_reference())
    if README in markdown:
        markdown = markdown.replace(README, _readme())
    return markdown
