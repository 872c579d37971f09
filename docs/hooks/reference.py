"""MkDocs hook: pages written from one source at build time.

``<!-- cli-reference -->``: the ``--help`` of ``volgan`` and of every subcommand, as the installed
volgan prints it. ``<!-- config-reference -->``: one table per config section, written from the
field descriptions in ``src/volgan/config.py`` (:func:`volgan.config.reference_rows`).
``<!-- readme -->``: the repository's README (the site's home page), its links made relative to
``docs/``.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

MARKER = "<!-- cli-reference -->"
CONFIG = "<!-- config-reference -->"
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


def _plain(text: str) -> str:
    """Plain text for Markdown, shown as typed: its characters that mean something there escaped, ``|``
    (a table's cell border) among them."""
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", text).replace("<", "&lt;")


def _config_reference() -> str:
    from volgan.config import reference_rows, section_descriptions

    sections: dict[str, list[tuple[str, str, str]]] = {}
    for key, default, meaning in reference_rows():
        sections.setdefault(key.rpartition(".")[0], []).append((key, default, meaning))
    described = section_descriptions()
    parts = []
    for section, rows in sections.items():
        lines = [f"## {section or 'Top level'}", "", _plain(described[section]), ""]
        lines += ["| key | default | meaning |", "|---|---|---|"]
        lines += [f"| `{key}` | {_plain(default)} | {_plain(meaning)} |" for key, default, meaning in rows]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _readme() -> str:
    text = (ROOT / "README.md").read_text()
    return re.sub(r"\]\(docs/", "](", re.sub(r"\(docs/([^)]*)\)", r"(\1)", text))


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, _cli_reference())
    if CONFIG in markdown:
        markdown = markdown.replace(CONFIG, _config_reference())
    if README in markdown:
        markdown = markdown.replace(README, _readme())
    return markdown
