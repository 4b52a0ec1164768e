"""Checkpoint directories: listing, meta.json, selection, retention plans and verification,
by the rules of the C++ library (src/engine/catalog.cpp, src/format/meta.cpp,
src/engine/selection.cpp, src/engine/retention.cpp). Needs neither torch nor numpy.
Roots may be local directories or s3://bucket/prefix (storage.py; boto3 needed for those).
"""

import math
import os
import warnings

from . import _canonical, storage
from .errors import CorruptCheckpointError, FormatVersionError, MissingKeyError, UsageError

FORMAT_VERSION = 2  # the newest this reader reads; version 2 adds keys split into parts
OLDEST_FORMAT_VERSION = 1
CHECKPOINT_PREFIX = "CKPT+"
META_FILE = "meta.json"
PIN_FILE = "PINNED"
MAX_META_BYTES = 16 << 20

try:  # Debian: python3-xxhash
    import xxhash as _xxhash
except ImportError:  # pragma: no cover - depends on the machine
    _xxhash = None

_warned_no_xxhash = False


def checksums_available():
    """True when the xxhash module is installed, so XXH3 checksums are verified."""
    return _xxhash is not None


def _warn_no_xxhash():
    global _warned_no_xxhash
    if not _warned_no_xxhash:
        _warned_no_xxhash = True
        warnings.warn("savepoint: the xxhash module is not installed (Debian: python3-xxhash); "
                      "XXH3 checksums are not verified, only file sizes", RuntimeWarning, stacklevel=3)


def xxh3_hex(data):
    """XXH3-64 (seed 0) of `data` as 16 lowercase hex digits, as meta.json records it."""
    return _xxhash.xxh3_64_hexdigest(data)


class FileRecord:
    """One key's file as meta.json records it."""

    __slots__ = ("key", "file", "hook", "bytes", "xxh3", "rank", "part")

    def __init__(self, key, file, hook, bytes, xxh3, rank=None, part=None):
        self.key, self.file, self.hook, self.bytes, self.xxh3 = key, file, hook, bytes, xxh3
        self.rank = rank  # the rank of a per-rank key's file (distributed checkpoints), else None
        self.part = part  # the part's index of a key split into parts (format 2), else None

    def __repr__(self):
        return "FileRecord(key=%r, file=%r, hook=%r, bytes=%d)" % (self.key, self.file, self.hook, self.bytes)


class Problem:
    """What verify() found wrong: the key (None for meta.json), the file and why."""

    __slots__ = ("key", "file", "reason")

    def __init__(self, key, file, reason):
        self.key, self.file, self.reason = key, file, reason

    def __repr__(self):
        return "Problem(key=%r, file=%r, reason=%r)" % (self.key, self.file, self.reason)


class Checkpoint:
    """One committed checkpoint: its directory, meta (the user's meta plus "unixtime" and
    "end_of_epoch", as in C++), save sequence number, file records and pin state."""

    def __init__(self, path, meta, sequence, files, pinned, world_size=None):
        self.path = path
        self.meta = meta
        self.sequence = sequence
        self.files = files
        self.pinned = pinned
        self.world_size = world_size  # the number of ranks that saved it (distributed checkpoints)

    @property
    def name(self):
        return os.path.basename(self.path)

    @property
    def unixtime(self):
        return self.meta["unixtime"]

    @property
    def end_of_epoch(self):
        return self.meta["end_of_epoch"]

    @property
    def keys(self):
        return list(dict.fromkeys(f.key for f in self.files))

    def file(self, key, rank=None):
        """The record of `key` (of a per-rank key: rank `rank`'s, rank 0's by default; of a key
        split into parts: part 0's), or None."""
        found = None
        for f in self.files:
            if f.key == key and (f.rank is None or f.rank == (rank or 0)):
                if not f.part:  # a whole file, or part 0 wherever meta.json lists it
                    return f
                found = found or f
        return found

    def parts(self, key, rank=None):
        """Every file of `key` (of rank `rank`): its one record, or its parts in part order."""
        first = self.record(key, rank)
        if first.part is None:
            return [first]
        return sorted((f for f in self.files if f.key == key and f.rank == first.rank), key=lambda f: f.part)

    def record(self, key, rank=None):
        """The record of `key`; MissingKeyError naming the checkpoint's keys otherwise."""
        rec = self.file(key, rank)
        if rec is None:
            what = key if rank is None else "%s' of rank '%d" % (key, rank)
            raise MissingKeyError("checkpoint '%s' has no key '%s' (keys: %s)" % (self.path, what, ", ".join(self.keys)),
                                  self.path, key)
        return rec

    def read_verified(self, key, rank=None):
        """The bytes of `key`'s file (of a per-rank key: rank `rank`'s, default 0), checked
        against meta.json: a regular file (no symlink), the recorded size and (when xxhash is
        installed) XXH3. CorruptCheckpointError otherwise. A key split into parts (format 2):
        every part checked the same way, and the bytes the unsplit file would hold returned."""
        records = self.parts(key, rank)
        if records[0].part is None:
            return self.read_file_verified(records[0])
        from . import safetensors
        return safetensors.assemble_parts([(self.read_file_verified(r), storage.join(self.path, r.file)) for r in records],
                                          key)

    def read_file_verified(self, rec):
        """The bytes of one file of the checkpoint, checked against its record `rec`."""
        key = rec.key
        path = storage.join(self.path, rec.file)
        st = storage.lstat(path)
        if st is None:
            raise CorruptCheckpointError("checkpoint '%s' is missing file '%s' of key '%s'" % (self.path, rec.file, key),
                                         path, key)
        size, regular = st
        if not regular:
            raise CorruptCheckpointError("'%s' (key '%s') is not a regular file (symlinks are refused)" % (path, key),
                                         path, key)
        if size != rec.bytes:
            raise CorruptCheckpointError("'%s' (key '%s') has %d bytes, meta.json recorded %d (truncated or overwritten)"
                                         % (path, key, size, rec.bytes), path, key)
        data = bytearray(storage.read(path))
        if len(data) != rec.bytes:
            raise CorruptCheckpointError("'%s' (key '%s') changed while being read" % (path, key), path, key)
        if _xxhash is None:
            _warn_no_xxhash()
        else:
            digest = xxh3_hex(data)
            if digest != rec.xxh3:
                raise CorruptCheckpointError("'%s' (key '%s') fails its checksum: xxh3 %s but meta.json recorded %s "
                                             "(the data was damaged after it was written)" % (path, key, digest, rec.xxh3),
                                             path, key)
        return data

    def verify(self):
        """Every file against its record; a list of Problems (empty: intact)."""
        problems = []
        try:
            on_disk = read_checkpoint(self.path)
        except CorruptCheckpointError as e:
            return [Problem(None, storage.join(self.path, META_FILE), str(e))]
        for rec in on_disk.files:
            try:
                on_disk.read_file_verified(rec)
            except CorruptCheckpointError as e:
                problems.append(Problem(rec.key, storage.join(self.path, rec.file), str(e)))
        return problems

    def __eq__(self, other):
        return isinstance(other, Checkpoint) and (self.path, self.meta, self.sequence) == (other.path, other.meta, other.sequence)

    def __hash__(self):
        return hash((self.path, self.sequence))

    def __repr__(self):
        return "Checkpoint(%r, sequence=%d, meta=%r)" % (self.name, self.sequence, self.meta)

    # Loading (torch needed); see torch_state.py.
    def load_tensors(self, key):
        """The tensors of a safetensors key, by name (verified first)."""
        from .torch_state import load_tensors
        return load_tensors(self, key)

    def state_dict(self, key="model"):
        """A module key as a state_dict for nn.Module.load_state_dict."""
        from .torch_state import module_state_dict
        return module_state_dict(self, key)

    def optimizer_state_dict(self, key="optimizer"):
        """An optimizer key as the state_dict of the matching torch.optim optimizer."""
        from .torch_state import optimizer_state_dict
        return optimizer_state_dict(self, key)

    def load_json(self, key):
        """A JSON key (scheduler.json, epochs.json, your own JSON state), verified first."""
        import json
        return json.loads(self.read_verified(key).decode("utf-8"))


def _is_plain_file_name(name):
    return bool(name) and name not in (".", "..") and len(name) <= 255 and not any(c in name for c in "/\\\0")


def _is_uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_hex16(s):
    return isinstance(s, str) and len(s) == 16 and all(c in "0123456789abcdef" for c in s)


def parse_meta(directory, text):
    """Parses and validates a checkpoint's meta.json text (bytes); CorruptCheckpointError or
    FormatVersionError naming the file otherwise."""
    file = storage.join(directory, META_FILE)

    def bad(why):
        raise CorruptCheckpointError("checkpoint meta '%s' is invalid: %s" % (file, why), file)

    try:
        raw = _canonical.parse_keeping_numbers(text.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        bad("not valid JSON (%s)" % e)
    if not isinstance(raw, dict):
        bad("not a JSON object")
    doc = _canonical.plain(raw)
    if doc.get("format") != "savepoint":
        bad('"format" is not "savepoint"')
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        bad("no integer format_version")
    if not OLDEST_FORMAT_VERSION <= version <= FORMAT_VERSION:
        raise FormatVersionError("checkpoint '%s' has format version %d, but this reader reads versions %d to %d; "
                                 "upgrade savepoint to load it"
                                 % (directory, version, OLDEST_FORMAT_VERSION, FORMAT_VERSION), file)
    checksum = doc.get("checksum")
    if not _is_hex16(checksum):
        bad('missing or malformed "checksum"')
    if _xxhash is not None:
        body = dict(raw)
        del body["checksum"]
        if xxh3_hex(_canonical.dump(body)) != checksum:
            bad("checksum mismatch (the file was modified or damaged)")
    else:
        _warn_no_xxhash()
    for field in ("sequence", "unixtime", "end_of_epoch", "meta", "files"):
        if field not in doc:
            bad("missing or mistyped field (no \"%s\")" % field)
    if not _is_uint(doc["sequence"]):
        bad('"sequence" is not a non-negative integer')
    t = doc["unixtime"]
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        bad('"unixtime" is not a number')
    if not isinstance(doc["end_of_epoch"], bool):
        bad('"end_of_epoch" is not a boolean')
    if not isinstance(doc["meta"], dict):
        bad('"meta" is not an object')
    if not isinstance(doc["files"], list):
        bad('"files" is not an array')
    world_size = doc.get("world_size")  # distributed checkpoints only
    if world_size is not None and (not _is_uint(world_size) or not 1 <= world_size <= 1 << 20):
        bad('"world_size" is not a positive integer')
    meta = dict(doc["meta"])
    meta["unixtime"] = t
    meta["end_of_epoch"] = doc["end_of_epoch"]
    files = []
    for f in doc["files"]:
        if not isinstance(f, dict):
            bad('an entry of "files" is not an object')
        for field, kind in (("key", str), ("file", str), ("hook", str), ("xxh3", str)):
            if not isinstance(f.get(field), kind):
                bad("missing or mistyped field (\"%s\" of a file)" % field)
        key = f["key"]
        if not _is_uint(f.get("bytes")):
            bad("\"bytes\" of key '%s' is not a size" % key)
        if not _is_hex16(f["xxh3"]):
            bad("malformed xxh3 of key '%s'" % key)
        if not _is_plain_file_name(key):
            bad("invalid key name '%s'" % key)
        if not _is_plain_file_name(f["file"]) or f["file"] in (META_FILE, PIN_FILE):
            bad("key '%s' names file '%s', which is not a plain file name in the checkpoint directory" % (key, f["file"]))
        rank = f.get("rank")  # a per-rank key: one record per rank
        if rank is not None and (not _is_uint(rank) or world_size is None or rank >= world_size):
            bad("\"rank\" of key '%s' is not a rank below \"world_size\"" % key)
        part = f.get("part")  # a key split into parts (format 2): one record per part
        if part is not None and (version < 2 or not _is_uint(part) or part > 1 << 24):
            bad("\"part\" of key '%s' is not a part index (format 2)" % key)
        for o in files:
            if o.key != key or not (o.rank is None or rank is None or o.rank == rank):
                continue
            if o.rank != rank or o.part is None or part is None or o.part == part:
                bad("duplicate key '%s'" % key)
        if any(o.file == f["file"] for o in files):
            bad("two keys share file '%s'" % f["file"])
        files.append(FileRecord(key, f["file"], f["hook"], f["bytes"], f["xxh3"], rank, part))
    # The parts of a key are numbered 0 to n-1, each once.
    groups = {}
    for rec in files:
        if rec.part is not None:
            groups.setdefault((rec.key, rec.rank), []).append(rec.part)
    for (key, _), parts in groups.items():
        if sorted(parts) != list(range(len(parts))):
            bad("the parts of key '%s' are not numbered 0 to %d" % (key, len(parts) - 1))
    return Checkpoint(directory, meta, doc["sequence"], files, False, world_size)


def read_checkpoint(directory):
    """Reads and validates `directory`/meta.json (and whether it is pinned)."""
    file = storage.join(directory, META_FILE)
    try:
        text = storage.read(file, limit=MAX_META_BYTES + 1)
    except OSError as e:
        raise CorruptCheckpointError("cannot read '%s': %s" % (file, e.strerror or e), file) from None
    if len(text) > MAX_META_BYTES:
        raise CorruptCheckpointError("'%s' is larger than %d bytes" % (file, MAX_META_BYTES), file)
    ckpt = parse_meta(directory, text)
    pin = storage.lstat(storage.join(directory, PIN_FILE))
    ckpt.pinned = pin is not None and pin[1]
    return ckpt


# ----------------------------------------------------------------------------- selection

def finite_metric(checkpoint, key):
    """meta[key] if it is a finite number (not a bool, not null, not a string), else None."""
    v = checkpoint.meta.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class _Selector:
    def __init__(self, min_key=None, max_key=None, importance_key=None, where=None):
        given = sum(x is not None for x in (min_key, max_key, importance_key))
        if given > 1:
            raise UsageError("savepoint: a selector takes only one of importance_key, max_key and min_key")
        if min_key == "" or max_key == "":
            raise UsageError("savepoint: min_key/max_key must name a meta key (got an empty string)")
        self.min_key, self.max_key, self.importance_key, self.where = min_key, max_key, importance_key, where

    @property
    def metric(self):
        return self.min_key if self.min_key is not None else self.max_key

    def rankable(self, c):
        if self.metric is not None:
            return finite_metric(c, self.metric) is not None
        if self.importance_key is not None:
            return not math.isnan(self.importance_key(c))
        return True


def _rank(checkpoints, sel):
    """Best first: larger score; NaN last; ties by recency (larger sequence), then path."""
    metric = sel.metric
    scored = []
    for c in checkpoints:
        if sel.where is not None and not sel.where(c):
            continue
        if metric is not None and metric not in c.meta:
            continue
        if metric is not None:
            v = finite_metric(c, metric)
            score = math.nan if v is None else (-v if sel.min_key is not None else v)
        elif sel.importance_key is not None:
            score = float(sel.importance_key(c))
        else:
            score = float(c.sequence)
        scored.append((score, c))

    def key(item):
        score, c = item
        nan = math.isnan(score)
        # sorted() ascending: non-NaN first, larger score first, larger sequence first, larger path first.
        return (nan, 0.0 if nan else -score, -c.sequence, _Desc(c.path))

    return [c for _, c in sorted(scored, key=key)]


class _Desc:
    __slots__ = ("s",)

    def __init__(self, s):
        self.s = s

    def __lt__(self, other):
        return self.s > other.s

    def __eq__(self, other):
        return self.s == other.s


def rank(checkpoints, min_key=None, max_key=None, importance_key=None, where=None):
    """`checkpoints` best first, as the C++ detail::rank ranks them: only those `where`
    accepts and (for min_key/max_key) whose meta has the key; values that are not finite
    numbers rank last; ties go to the most recent (larger sequence)."""
    return _rank(checkpoints, _Selector(min_key, max_key, importance_key, where))


def deletion_set(checkpoints, num_to_keep=1, min_keys=(), max_keys=(), importance_keys=(), keep_recent=True,
                 predicate=None, keep_newest=None):
    """What the C++ keep rules (savepoint::keep(n).min_key(..)...) delete from `checkpoints`:
    each key protects its best num_to_keep (never a checkpoint whose metric is not a finite
    number), recency too when keep_recent; `predicate` says "may be deleted"; pinned ones
    never are. The newest (highest sequence) is never deleted unless the rules ask for zero
    recent checkpoints (num_to_keep=0 with keep_recent) or keep_newest=False, as in C++."""
    if num_to_keep < 0:
        raise UsageError("savepoint: the number of checkpoints to keep must be >= 0 (got %d)" % num_to_keep)
    selectors = [_Selector(min_key=k) for k in min_keys] + [_Selector(max_key=k) for k in max_keys]
    selectors += [_Selector(importance_key=f) for f in importance_keys]
    if keep_recent:
        selectors.append(_Selector())
    candidates, protected = set(), set()
    for sel in selectors:
        sel.where = predicate
        order = _rank(checkpoints, sel)
        for i, c in enumerate(order):
            candidates.add(c.path)
            protectable = sel.importance_key is not None or sel.rankable(c)
            if i < num_to_keep and protectable:
                protected.add(c.path)
    release_newest = keep_recent and num_to_keep == 0
    if keep_newest is not None:
        release_newest = not keep_newest
    if not release_newest and checkpoints:
        protected.add(max(checkpoints, key=lambda c: c.sequence).path)
    return [c for c in checkpoints if c.path in candidates and c.path not in protected and not c.pinned]


class CheckpointDir:
    """A checkpoint root written by savepoint::Checkpointer, opened for reading: a directory,
    or s3://bucket/prefix (storage.py: boto3, endpoint and credentials from the environment).

        run = savepoint.CheckpointDir("runs/exp1/save")
        best = run.find_checkpoint(min_key="val_loss")
        model.load_state_dict(best.state_dict("model"))
    """

    def __init__(self, directory):
        directory = os.fspath(directory)
        if storage.is_remote(directory):
            directory = directory.rstrip("/")
        storage.check_root(directory)
        self.directory = directory

    def _scan(self):
        good, bad = [], []
        # Directories (no files, no symlinks); on S3 the names that have a meta.json.
        for name in storage.list_dirs(self.directory, CHECKPOINT_PREFIX, META_FILE):
            path = storage.join(self.directory, name)
            try:
                good.append(read_checkpoint(path))
            except (CorruptCheckpointError, FormatVersionError) as e:
                bad.append(Problem(None, storage.join(path, META_FILE), str(e)))
        good.sort(key=lambda c: (c.sequence, c.path))
        return good, bad

    def list_checkpoints(self):
        """Every committed checkpoint with a valid meta.json, oldest first (by sequence)."""
        return self._scan()[0]

    def unreadable_checkpoints(self):
        """Problems of CKPT+ directories left out of the listing (damaged or missing meta.json)."""
        return self._scan()[1]

    def find_checkpoints(self, min_key=None, max_key=None, importance_key=None, where=None, max_num_checkpoints=None):
        """Checkpoints best first by the selector (most recent first without one)."""
        out = rank(self.list_checkpoints(), min_key, max_key, importance_key, where)
        return out if max_num_checkpoints is None else out[:max_num_checkpoints]

    def find_checkpoint(self, min_key=None, max_key=None, importance_key=None, where=None):
        """The best checkpoint by the selector, or None."""
        found = self.find_checkpoints(min_key, max_key, importance_key, where, 1)
        return found[0] if found else None

    def checkpoint(self, name):
        """The committed checkpoint named `name` (e.g. "CKPT+best"); KeyError if none."""
        for c in self.list_checkpoints():
            if c.name == name:
                return c
        raise KeyError("savepoint: no committed checkpoint named '%s' in %s" % (name, self.directory))

    def plan_deletions(self, num_to_keep=1, min_keys=(), max_keys=(), importance_keys=(), keep_recent=True,
                       predicate=None, keep_newest=None):
        """What Checkpointer::plan_deletions(keep) returns for the same keep rules: checkpoints
        whose files are missing or of the wrong size are neither kept nor deleted."""
        intact = []
        for c in self.list_checkpoints():
            ok = True
            for f in c.files:
                st = storage.lstat(storage.join(c.path, f.file))
                ok = ok and st is not None and st[1] and st[0] == f.bytes
            if ok:
                intact.append(c)
        return deletion_set(intact, num_to_keep, min_keys, max_keys, importance_keys, keep_recent, predicate,
                            keep_newest)

    def verify(self):
        """{checkpoint name: [Problem, ...]} for every checkpoint, unreadable ones included."""
        good, bad = self._scan()
        out = {c.name: c.verify() for c in good}
        for p in bad:
            out[os.path.basename(os.path.dirname(p.file))] = [p]
        return out
