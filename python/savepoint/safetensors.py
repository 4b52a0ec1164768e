"""The safetensors layout, read strictly (every rule the C++ reader enforces), without the
`safetensors` package.

    u64 little-endian N | N bytes of JSON header | tensor bytes

Header entries {"dtype", "shape", "data_offsets": [begin, end]} relative to the byte buffer,
optional "__metadata__" of string values; the tensors cover the buffer with no holes and no
overlaps. Any violation raises CorruptCheckpointError naming the file.
"""

import errno
import json
import os
import struct

from . import storage
from .errors import CorruptCheckpointError, Error

MAX_HEADER_BYTES = 100_000_000

# dtype name -> (bytes per element, numpy dtype string or None)
DTYPES = {
    "BOOL": (1, "?"), "U8": (1, "u1"), "I8": (1, "i1"), "I16": (2, "<i2"), "U16": (2, "<u2"),
    "F16": (2, "<f2"), "BF16": (2, None), "I32": (4, "<i4"), "U32": (4, "<u4"), "F32": (4, "<f4"),
    "I64": (8, "<i8"), "U64": (8, "<u8"), "F64": (8, "<f8"), "C64": (8, "<c8"),
    "F8_E5M2": (1, None), "F8_E4M3": (1, None),
}


class TensorInfo:
    """One tensor's entry: name, dtype name, shape, [begin, end) in the byte buffer."""

    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name, dtype, shape, begin, end):
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end

    @property
    def nbytes(self):
        return self.end - self.begin

    def __repr__(self):
        return "TensorInfo(%r, %s, %r, %d bytes)" % (self.name, self.dtype, self.shape, self.nbytes)


class Header:
    """The parsed header: tensors in offset order, metadata, where the byte buffer starts."""

    def __init__(self, tensors, metadata, data_start):
        self.tensors = tensors
        self.metadata = metadata
        self.data_start = data_start

    def find(self, name):
        for t in self.tensors:
            if t.name == name:
                return t
        return None


class _Object(dict):
    duplicate = None


def _pairs(pairs):
    obj = _Object()
    for k, v in pairs:
        if k in obj and obj.duplicate is None:
            obj.duplicate = k
        obj[k] = v
    return obj


def _is_uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def parse_header(prefix_and_header, file_size, path):
    """Validates a header given the file's first 8 + N bytes and the whole file's size."""
    def bad(why):
        raise CorruptCheckpointError("tensor file '%s' is invalid: %s" % (path, why), path)

    if file_size < 8:
        bad("only %d bytes, shorter than the 8-byte header length" % file_size)
    if len(prefix_and_header) < 8:
        bad("only %d bytes given, shorter than the 8-byte header length" % len(prefix_and_header))
    (n,) = struct.unpack_from("<Q", prefix_and_header, 0)
    if n > MAX_HEADER_BYTES:
        bad("header length %d exceeds the %d byte cap" % (n, MAX_HEADER_BYTES))
    if n > file_size - 8:
        bad("header length %d runs past the end of the %d-byte file" % (n, file_size))
    if n > len(prefix_and_header) - 8:
        bad("header length %d but only %d header bytes given" % (n, len(prefix_and_header) - 8))
    text = bytes(prefix_and_header[8:8 + n])
    if not text.startswith(b"{"):
        bad("header does not start with '{'")
    try:
        doc = json.loads(text.decode("utf-8"), object_pairs_hook=_pairs)
    except (ValueError, UnicodeDecodeError) as e:
        bad("header is not valid JSON (%s)" % e)
    if not isinstance(doc, dict):
        bad("header is not a JSON object")
    if doc.duplicate is not None:
        bad("tensor name '%s' appears twice" % doc.duplicate)

    data_start = 8 + n
    buffer_size = file_size - data_start
    tensors, metadata = [], {}
    for name, entry in doc.items():
        if name == "__metadata__":
            if not isinstance(entry, dict):
                bad("__metadata__ is not an object")
            for k, v in entry.items():
                if not isinstance(v, str):
                    bad("__metadata__ value '%s' is not a string" % k)
                metadata[k] = v
            continue
        if not isinstance(entry, dict):
            bad("entry '%s' is not an object" % name)
        dtype = entry.get("dtype")
        if not isinstance(dtype, str):
            bad("tensor '%s' has no dtype" % name)
        if dtype not in DTYPES:
            bad("tensor '%s' has unknown dtype '%s'" % (name, dtype))
        shape = entry.get("shape")
        if not isinstance(shape, list):
            bad("tensor '%s' has no shape" % name)
        elements = 1
        for d in shape:
            if not _is_uint(d):
                bad("tensor '%s' has a dimension that is not a non-negative integer" % name)
            elements *= d
        offsets = entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and _is_uint(offsets[0]) and _is_uint(offsets[1])):
            bad("tensor '%s' has no valid data_offsets [begin, end]" % name)
        begin, end = offsets
        if end < begin:
            bad("tensor '%s' ends before it begins" % name)
        if end > buffer_size:
            bad("tensor '%s' ends at byte %d but the data buffer has only %d" % (name, end, buffer_size))
        if elements * DTYPES[dtype][0] != end - begin:
            bad("tensor '%s' has %d bytes but its shape and dtype %s need a different size" % (name, end - begin, dtype))
        tensors.append(TensorInfo(name, dtype, list(shape), begin, end))
    tensors.sort(key=lambda t: (t.begin, t.end))
    expected = 0
    for t in tensors:
        if t.begin < expected:
            bad("tensor '%s' overlaps the previous tensor" % t.name)
        if t.begin > expected:
            bad("hole in the data buffer before tensor '%s'" % t.name)
        expected = t.end
    if expected != buffer_size:
        bad("%d bytes after the last tensor are not described by the header" % (buffer_size - expected))
    return Header(tensors, metadata, data_start)


def parse(data, path):
    """Validates a whole file held in `data` (bytes-like)."""
    return parse_header(data, len(data), path)


def read_header(path):
    """The header of a safetensors file, read without its tensor bytes. `path` may be an
    s3://bucket/key object (boto3 needed): its size from a HEAD, then two ranged GETs, for the
    8-byte length and for the header."""
    if storage.is_remote(path):
        return _read_remote_header(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) == 8:
            (n,) = struct.unpack("<Q", prefix)
            if n <= MAX_HEADER_BYTES and n <= size - 8:
                prefix += f.read(n)
    return parse_header(prefix, size, path)


def _read_remote_header(path):
    st = storage.lstat(path)
    if st is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    size = st[0]
    prefix = b""
    if size >= 8:  # shorter: parse_header says so (and S3 refuses a Range on an empty object)
        prefix = storage.read(path, 0, 8)
        if len(prefix) == 8:
            (n,) = struct.unpack("<Q", prefix)
            if n <= MAX_HEADER_BYTES and n <= size - 8:
                prefix += storage.read(path, 8, n)
    return parse_header(prefix, size, path)


def to_numpy(data, header, info):
    """A tensor's values as a numpy array viewing `data` (bytes-like). BF16 comes back as
    uint16 bits; F8 dtypes are refused."""
    import numpy as np

    size, np_dtype = DTYPES[info.dtype]
    if info.dtype == "BF16":
        np_dtype = "<u2"
    if np_dtype is None:
        raise Error("tensor '%s': dtype %s cannot be converted by this reader" % (info.name, info.dtype))
    count = info.nbytes // size
    arr = np.frombuffer(data, dtype=np.dtype(np_dtype), count=count, offset=header.data_start + info.begin)
    return arr.reshape(info.shape)


def to_torch(data, header, info):
    """A tensor's values as a torch.Tensor (a copy, owning its memory)."""
    import numpy as np
    import torch

    arr = to_numpy(data, header, info)
    if info.dtype == "BF16":
        return torch.from_numpy(np.array(arr.view(np.int16), copy=True)).view(torch.bfloat16)
    if info.dtype == "U16" or info.dtype == "U32" or info.dtype == "U64":
        raise Error("tensor '%s': this torch has no %s tensors" % (info.name, info.dtype))
    return torch.from_numpy(np.array(arr, copy=True))


PART_METADATA = "savepoint.part"
SEGMENT_METADATA = "savepoint.segment"


def build_header(tensors, metadata):
    """The length prefix and JSON header savepoint's C++ writer builds for `tensors`
    ([(name, dtype, shape, nbytes)]) and `metadata`: tensors sorted by descending element size,
    then name; nlohmann's compact dump; padded with spaces to a multiple of 8. Returns
    (header bytes, tensors in data order)."""
    from . import _canonical

    order = sorted(tensors, key=lambda t: (-DTYPES[t[1]][0], t[0].encode("utf-8")))
    doc = {}
    if metadata:
        doc["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape, nbytes in order:
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = _canonical.dump(doc)
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text, order


def assemble_parts(parts, key):
    """The bytes the unsplit safetensors file of `key` would hold, from its parts' verified
    bytes in part order ([(bytes, path)]): docs/format.md, "Parts". CorruptCheckpointError
    naming the part's file and the key when the parts do not fit together."""
    tensors = []  # [name, dtype, shape, [pieces], rows seen, total rows or None]
    metadata = {}
    for i, (data, path) in enumerate(parts):
        def bad(why):
            raise CorruptCheckpointError("part %d of key '%s' ('%s') %s" % (i, key, path, why), path, key)

        header = parse(data, path)
        data = memoryview(data)  # the pieces view the parts' bytes; copied once, into the result
        if header.metadata.get(PART_METADATA) != str(i):
            bad('does not say it is part %d (its "%s" metadata)' % (i, PART_METADATA))
        if i == 0:
            metadata = {k: v for k, v in header.metadata.items() if k not in (PART_METADATA, SEGMENT_METADATA)}
        unfinished = tensors and tensors[-1][5] is not None and tensors[-1][4] != tensors[-1][5]
        segment = header.metadata.get(SEGMENT_METADATA)
        if segment is None:
            if unfinished:
                bad("follows an unfinished segmented tensor '%s'" % tensors[-1][0])
            for t in header.tensors:
                piece = data[header.data_start + t.begin:header.data_start + t.end]
                tensors.append([t.name, t.dtype, list(t.shape), [piece], 0, None])
            continue
        try:
            first, total = (int(x) for x in segment.split("/"))
        except ValueError:
            bad('has a malformed "%s" metadata' % SEGMENT_METADATA)
        if first < 0 or total <= first:
            bad('has a malformed "%s" metadata' % SEGMENT_METADATA)
        if len(header.tensors) != 1 or not header.tensors[0].shape:
            bad("is a segment but does not hold exactly one tensor with rows")
        t = header.tensors[0]
        if first == 0:
            if unfinished:
                bad("starts a tensor before segmented tensor '%s' is complete" % tensors[-1][0])
            tensors.append([t.name, t.dtype, [total] + list(t.shape[1:]), [], 0, total])
        entry = tensors[-1] if tensors else None  # None: a segment after row 0 opens the key
        if (entry is None or entry[5] != total or entry[0] != t.name or entry[1] != t.dtype
                or entry[2][1:] != list(t.shape[1:]) or entry[4] != first or first + t.shape[0] > total):
            bad("holds rows %d to %d of tensor '%s', which do not continue the parts before it"
                % (first, first + t.shape[0], t.name))
        entry[4] += t.shape[0]
        entry[3].append(data[header.data_start + t.begin:header.data_start + t.end])
    if tensors and tensors[-1][5] is not None and tensors[-1][4] != tensors[-1][5]:
        path = parts[-1][1]
        raise CorruptCheckpointError("key '%s': tensor '%s' ends at row %d of %d in its last part ('%s')"
                                     % (key, tensors[-1][0], tensors[-1][4], tensors[-1][5], path), path, key)
    by_name = {}
    for t in tensors:
        if by_name.setdefault(t[0], t) is not t:
            path = parts[0][1]
            raise CorruptCheckpointError("key '%s': tensor '%s' appears in two parts" % (key, t[0]), path, key)
    header, order = build_header([(t[0], t[1], t[2], sum(len(p) for p in t[3])) for t in tensors], metadata)
    out = bytearray(header)
    for name, _, _, _ in order:
        for piece in by_name[name][3]:
            out += piece
    return out
