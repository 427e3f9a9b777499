"""Writes one tool's section of BENCHMARKS.md, leaving the other sections alone.

Each benchmark tool owns the text between ``<!-- BEGIN name -->`` and
``<!-- END name -->``; a missing section is appended.
"""
from __future__ import annotations

import re
from pathlib import Path

HEADER = ("# Benchmarks\n\nEvery table below was written by the tool named in its section, "
          "with the exact command shown there.\n")


def update_section(path: str | Path, name: str, markdown: str) -> None:
    """Replaces (or appends) section ``name`` of the Markdown file at ``path``."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    block = f"<!-- BEGIN {name} -->\n{markdown.strip()}\n<!-- END {name} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
