#!/usr/bin/env python3
"""Refresh the code blocks that the docs include from files (stdlib only).

In a Markdown file, a block written as

    <!-- include: examples/tutorials/worker.py -->
    ```python
    ...anything...
    ```
    <!-- /include -->

is replaced by the current contents of the named file (the path is relative
to the repository root) in a fenced block. So the docs show the programs the
tests run, never a stale copy.

    scripts/gen-docs.py            rewrite the docs that are out of date
    scripts/gen-docs.py --check    change nothing; exit 1 if a doc is out of date
    scripts/gen-docs.py FILE...    only these Markdown files

Without FILE arguments: README*.md and docs/*.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BLOCK = re.compile(
    r"(?P<open><!-- include: (?P<path>[^ ]+?) -->\n)(?P<body>.*?)(?P<close><!-- /include -->)",
    re.S,
)
LANGUAGES = {".py": "python", ".sh": "sh", ".rs": "rust", ".toml": "toml", ".json": "json"}


def fenced(path: str) -> str:
    file = ROOT / path
    if not file.is_file():
        raise SystemExit(f"gen-docs: included file not found: {path}")
    text = file.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text += "\n"
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}{LANGUAGES.get(file.suffix, '')}\n{text}{fence}\n"


def render(markdown: str) -> str:
    return BLOCK.sub(lambda m: m["open"] + fenced(m["path"]) + m["close"], markdown)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if a doc is out of date, change nothing")
    ap.add_argument("files", nargs="*", type=Path)
    args = ap.parse_args()

    files = args.files or sorted(ROOT.glob("README*.md")) + sorted((ROOT / "docs").glob("*.md"))
    stale = []
    for doc in files:
        doc = doc if doc.is_absolute() else Path.cwd() / doc
        old = doc.read_text(encoding="utf-8")
        if "<!-- include:" not in old:
            continue
        opens, closes = old.count("<!-- include:"), old.count("<!-- /include -->")
        if opens != closes or len(BLOCK.findall(old)) != opens:
            print(f"{doc.relative_to(ROOT)}: unbalanced include markers", file=sys.stderr)
            return 2
        new = render(old)
        if new != old:
            stale.append(doc.relative_to(ROOT))
            if not args.check:
                doc.write_text(new, encoding="utf-8")
    if args.check and stale:
        for doc in stale:
            print(f"{doc}: out of date with the files it includes (run scripts/gen-docs.py)")
        return 1
    for doc in stale:
        print(f"updated {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
