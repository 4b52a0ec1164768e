#!/usr/bin/env python3
"""The guide's code cannot rot: every ```cpp block of a Markdown file must be preceded by a
line "<!-- snippet: FILE#NAME -->" and be exactly the region of FILE (relative to the
repository root) between the lines "// [snippet:NAME]" and "// [/snippet:NAME]", both with
their common indentation removed. A diff is printed for each block that differs.
  check-snippets.py <markdown file> <repository root>
"""
import difflib
import re
import sys
from pathlib import Path

MARKER = re.compile(r"^\s*<!-- snippet: (\S+)#(\S+) -->\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


def dedent(lines):
    indents = [len(l) - len(l.lstrip(" ")) for l in lines if l.strip()]
    cut = min(indents) if indents else 0
    return [l[cut:] if l.strip() else "" for l in lines]


def region(path, name):
    lines = path.read_text().splitlines()
    begin = [i for i, l in enumerate(lines) if l.strip() == f"// [snippet:{name}]"]
    end = [i for i, l in enumerate(lines) if l.strip() == f"// [/snippet:{name}]"]
    if len(begin) != 1 or len(end) != 1 or end[0] < begin[0]:
        return None
    return dedent(lines[begin[0] + 1:end[0]])


def main():
    doc, root = Path(sys.argv[1]), Path(sys.argv[2])
    lines = doc.read_text().splitlines()
    failures, checked, i = 0, 0, 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence or fence.group(2) != "cpp":
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            i += 1
        block = dedent(lines[start + 1:i])
        i += 1
        marker = MARKER.match(lines[start - 1]) if start > 0 else None
        where = f"{doc}:{start + 1}"
        if not marker:
            print(f"FAIL: {where}: a ```cpp block without a '<!-- snippet: FILE#NAME -->' line above it")
            failures += 1
            continue
        source, name = root / marker.group(1), marker.group(2)
        expected = region(source, name) if source.exists() else None
        if expected is None:
            print(f"FAIL: {where}: {marker.group(1)} has no single '// [snippet:{name}]' ... '// [/snippet:{name}]' region")
            failures += 1
            continue
        checked += 1
        if block != expected:
            failures += 1
            print(f"FAIL: {where}: the block differs from {marker.group(1)}#{name}:")
            sys.stdout.writelines(l + "\n" for l in difflib.unified_diff(
                expected, block, f"{marker.group(1)}#{name}", f"{doc}:{start + 1}", lineterm=""))
    if failures:
        print(f"{failures} snippet(s) of {doc} do not match compiled code; edit them together")
        return 1
    print(f"every ```cpp block of {doc} is compiled code ({checked} snippets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
