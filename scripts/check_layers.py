#!/usr/bin/env python3
"""Checks that the library depends only downward, has no include circles, and that only io/
makes file-system, memory-mapping and socket system calls.

Layers, bottom first (docs/architecture.md), one folder of src/ each:
  base -> io -> format -> engine -> tier -> facade -> training -> tools -> torch
The internal headers (internal/savepoint/detail/*.hpp, included as <savepoint/detail/...>)
belong to the layer that implements them (INTERNAL_LAYERS). A file of src/ or an internal
header may include ("..." or <savepoint/...>) headers of its own layer or of layers below it;
installed headers (include/savepoint/...) are the API and may be used anywhere, but they must
not include an internal header (those are never installed). Every include between src/ files
and internal headers is followed, and a circle fails the check as well.

Outside src/io/ (in src/, internal/ and include/), a global-scope call (`::name(`, the way the
code base calls POSIX) of a file-system, memory-mapping or socket system call (SYSCALLS), a
syscall(SYS_name, ...) of one, or an include of a header that declares them (SYSTEM_HEADERS)
is a problem: every such operation goes through io/, where the fault seam of the tests sees it.

Usage: python3 scripts/check_layers.py [PROJECT_ROOT]   (exit 0: clean, 1: violations)
"""
import os
import re
import sys

LAYERS = ["base", "io", "format", "engine", "tier", "facade", "training", "tools", "torch"]
# internal/savepoint/detail/<name>: the layer of the src/ folder that implements it. A new
# internal header must be added here (the check fails until it is).
INTERNAL_LAYERS = {
    "io.hpp": "io",            # src/io/: the I/O seam
    "object_store.hpp": "io",  # src/io/object_store.cpp, s3_client.cpp
    "phases.hpp": "io",        # load_phases(): src/io/read.cpp (format and engine add their times)
    "meta.hpp": "format",      # src/format/meta.cpp, verify.cpp, parts.cpp
    "snapshot.hpp": "engine",  # set_snapshot_copy_hook(): src/engine/snapshot.cpp
}
# Known upward includes, each with the issue that removes it. Adding one here needs a reason.
ALLOWED = {}
# Known system calls outside src/io/: {(file, name): reason}. Adding one here needs a reason.
ALLOWED_CALLS = {}

SYSCALLS = [
    # descriptors, reads and writes
    "open", "openat", "creat", "close", "read", "write", "pread", "pwrite", "readv", "writev", "preadv",
    "pwritev", "lseek", "dup", "dup2", "dup3", "fcntl", "flock", "ioctl",
    # durability and space
    "fsync", "fdatasync", "sync_file_range", "syncfs", "ftruncate", "truncate", "fallocate",
    "posix_fallocate", "posix_fadvise", "readahead", "sendfile", "copy_file_range", "splice",
    # names and metadata
    "stat", "lstat", "fstat", "fstatat", "statx", "statvfs", "fstatvfs", "statfs", "fstatfs", "access",
    "faccessat", "unlink", "unlinkat", "remove", "rename", "renameat", "renameat2", "link", "linkat",
    "symlink", "symlinkat", "readlink", "readlinkat", "realpath", "mkdir", "mkdirat", "rmdir", "chmod",
    "fchmod", "fchmodat", "chown", "fchown", "lchown", "utime", "utimes", "utimensat", "futimens",
    "mkstemp", "mkdtemp",
    # directories
    "opendir", "fdopendir", "readdir", "readdir_r", "closedir", "rewinddir", "getdents", "getdents64",
    # memory
    "mmap", "munmap", "mremap", "msync", "madvise", "posix_madvise", "mprotect", "mlock", "mlock2",
    "munlock", "mlockall", "munlockall",
    # sockets
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "send", "sendto",
    "sendmsg", "recv", "recvfrom", "recvmsg", "shutdown", "setsockopt", "getsockopt", "getaddrinfo",
]
SYSTEM_HEADERS = ["fcntl.h", "sys/mman.h", "sys/stat.h", "sys/statvfs.h", "sys/statfs.h", "sys/vfs.h",
                  "sys/file.h", "sys/sendfile.h", "sys/uio.h", "dirent.h", "sys/socket.h", "sys/un.h",
                  "netinet/in.h", "netinet/tcp.h", "arpa/inet.h", "netdb.h"]

_NAMES = "|".join(sorted(SYSCALLS, key=len, reverse=True))
SYSTEM_CALL = re.compile(
    r"(?P<call>(?<![\w>)\]])::(?P<name>" + _NAMES + r")\s*\()|"
    r"(?P<sys>\bsyscall\s*\(\s*SYS_(?P<sysname>" + _NAMES + r")\b)|"
    r"(?P<inc>^[ \t]*#[ \t]*include[ \t]*<(?P<header>" + "|".join(re.escape(h) for h in SYSTEM_HEADERS) + r")>)",
    re.M)
INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*(?:"([^"]+)"|<(savepoint/[^>]+)>)', re.M)
SOURCE_SUFFIXES = (".cpp", ".hpp", ".h")


def walk(root, top):
    out = []
    for dirpath, _, names in os.walk(os.path.join(root, top)):
        for n in names:
            if n.endswith(SOURCE_SUFFIXES):
                out.append(os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/"))
    return sorted(out)


def layer_of(path):
    """Index in LAYERS of a file of src/ or of an internal header; None outside them."""
    parts = path.split("/")
    if len(parts) >= 3 and parts[0] == "src" and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    if path.startswith("internal/savepoint/detail/") and parts[-1] in INTERNAL_LAYERS:
        return LAYERS.index(INTERNAL_LAYERS[parts[-1]])
    return None


def kind_of(path):
    if path.startswith("src/"):
        return "src"
    if path.startswith("internal/"):
        return "internal"
    if path.startswith("include/"):
        return "include"
    return "other"


def describe(path):
    layer = layer_of(path)
    return f"{path} ({LAYERS[layer]})" if layer is not None else path


def resolve(root, f, quoted, angled, problems):
    """The project file an include names (relative to the root), or None (a system, generated
    or third-party header). <savepoint/...> is looked up where the build looks: internal/, then
    include/ (a name in both is a problem: which one a file gets depends on the include order)."""
    exists = lambda p: os.path.isfile(os.path.join(root, p))
    if quoted:
        here = os.path.normpath(os.path.join(os.path.dirname(f), quoted)).replace(os.sep, "/")
        if exists(here):
            return here
        name = quoted
    else:
        name = angled
    if not name.startswith("savepoint/"):
        return None
    candidates = [p for p in ("internal/" + name, "include/" + name) if exists(p)]
    if len(candidates) > 1:
        problems.append(f"{f}: <{name}> is both {candidates[0]} and {candidates[1]}: rename one")
    return candidates[0] if candidates else None


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    files = walk(root, "src") + walk(root, "internal") + walk(root, "include")
    graph = {}
    problems = []
    for f in files:
        kind = kind_of(f)
        with open(os.path.join(root, f), encoding="utf-8") as fh:
            text = fh.read()
        if kind == "internal" and layer_of(f) is None:
            problems.append(f"{f}: an internal header without a layer (add it to INTERNAL_LAYERS in "
                            f"scripts/check_layers.py, with the layer of the src/ folder that implements it)")
        if not f.startswith("src/io/"):
            for m in SYSTEM_CALL.finditer(text):
                name = m.group("name") or m.group("sysname") or m.group("header")
                if (f, name) in ALLOWED_CALLS:
                    continue
                line = text.count("\n", 0, m.start()) + 1
                problems.append(f"{f}:{line}: {m.group(0).strip()} outside src/io/ "
                                f"(file, memory-mapping and socket operations go through io/)")
        if kind == "include":
            for quoted, angled in INCLUDE.findall(text):
                target = resolve(root, f, quoted, angled, problems)
                if target is not None and kind_of(target) != "include":
                    problems.append(f"{f} (an installed header) includes {target}, which is never installed")
            continue
        graph[f] = []
        lf = layer_of(f)
        for quoted, angled in INCLUDE.findall(text):
            target = resolve(root, f, quoted, angled, problems)
            if target is None or kind_of(target) == "include":
                continue  # a generated, system or installed header: the API may be used anywhere
            graph[f].append(target)
            lt = layer_of(target)
            if lf is None or lt is None:
                if lf is not None or kind == "src":  # an unlayered internal header is reported once, above
                    problems.append(f"{describe(f)}: includes {target}, outside the layered folders of src/ "
                                    f"and the internal headers")
            elif lt > lf and (f, target) not in ALLOWED:
                problems.append(f"{describe(f)} includes {describe(target)}: an upward include")
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
          f"{len(ALLOWED)} known upward include(s) and {len(ALLOWED_CALLS)} known system call(s) allowed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
