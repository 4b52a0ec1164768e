#!/usr/bin/env python3
"""Checks that src/ depends only downward, has no include circles, and that only io/ touches
file descriptors.

Layers, bottom first (docs/architecture.md), one folder each:
  base -> io -> format -> engine -> facade -> training -> tools -> torch
A file may include (with "...") headers of its own layer or of layers below it; installed
headers (<savepoint/...>) are the API and may be used anywhere. Every include between src/
files is followed, and a circle fails the check as well. Outside src/io/, a call of open,
pread, pwrite, read, write, close, fsync, mmap or an include of <fcntl.h> is a problem: every
file operation goes through io/, where the fault seam of the tests sees it.

Usage: python3 scripts/check_layers.py [PROJECT_ROOT]   (exit 0: clean, 1: violations)
"""
import os
import re
import sys

LAYERS = ["base", "io", "format", "engine", "facade", "training", "tools", "torch"]
# Known upward includes, each with the issue that removes it. Adding one here needs a reason.
ALLOWED = {}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
FILE_DESCRIPTOR = re.compile(r'((?<![\w>])::(open|openat|pread|pwrite|read|write|close|fsync|fdatasync|mmap)\s*\()|'
                             r'(#\s*include\s*<fcntl\.h>)')


def layer_of(path):
    parts = path.split("/")
    if len(parts) >= 3 and parts[0] == "src" and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return None


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    files = []
    for dirpath, _, names in os.walk(os.path.join(root, "src")):
        for n in names:
            if n.endswith((".cpp", ".hpp", ".h")):
                files.append(os.path.relpath(os.path.join(dirpath, n), root))
    graph = {}
    problems = []
    for f in sorted(files):
        with open(os.path.join(root, f), encoding="utf-8") as fh:
            text = fh.read()
        graph[f] = []
        if not f.startswith("src/io/"):
            for m in FILE_DESCRIPTOR.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                problems.append(f"{f}:{line}: {m.group(0).strip()} outside src/io/ (file operations go through io/)")
        for inc in INCLUDE.findall(text):
            target = os.path.normpath(os.path.join(os.path.dirname(f), inc))
            if not os.path.exists(os.path.join(root, target)):
                continue  # a generated or installed header
            graph[f].append(target)
            lf, lt = layer_of(f), layer_of(target)
            if lf is None or lt is None:
                problems.append(f"{f}: includes {target}, outside the layered folders of src/")
            elif lt > lf and (f, target) not in ALLOWED:
                problems.append(f"{f} ({LAYERS[lf]}) includes {target} ({LAYERS[lt]}): an upward include")
    # Circles: depth-first search with colours.
    state = {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                problems.append("an include circle: " + " -> ".join(cycle))
            elif state.get(nxt) is None:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [])
    for p in problems:
        print("layers:", p)
    edges = sum(len(v) for v in graph.values())
    print(f"layers: {len(graph)} files, {edges} includes between them, {len(problems)} problem(s), "
          f"{len(ALLOWED)} known upward include(s) allowed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
