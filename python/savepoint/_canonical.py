"""nlohmann::json's compact dump(), which meta.json's checksum covers.

The checksum is XXH3-64 of `doc.dump()` without its "checksum" member: keys sorted by their
UTF-8 bytes, no spaces, strings escaped as nlohmann escapes them, and numbers exactly as
nlohmann prints them. Numbers are kept as the text they had in the file (nlohmann wrote that
text, and re-printing a parsed number gives the same text), so no float formatting has to be
reimplemented.
"""

import json


class Number:
    """A JSON number with the text it was read from."""

    __slots__ = ("value", "text")

    def __init__(self, text, value):
        self.text = text
        self.value = value


def _float(text):
    return Number(text, float(text))


def _int(text):
    return Number(text, int(text))


def parse_keeping_numbers(text):
    """Parses JSON, numbers as Number objects (their source text kept)."""
    return json.loads(text, parse_float=_float, parse_int=_int)


def plain(value):
    """The same document with Number objects replaced by their int/float values."""
    if isinstance(value, Number):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _string(s):
    out = ['"']
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def dump(value):
    """nlohmann's dump() of a document parsed by parse_keeping_numbers, as UTF-8 bytes."""
    return _dump(value).encode("utf-8")


def _dump(v):
    if isinstance(v, Number):
        return v.text
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, int):  # a plain int (a header this reader builds): nlohmann prints it the same
        return str(v)
    if isinstance(v, list):
        return "[" + ",".join(_dump(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: k.encode("utf-8"))  # std::map<std::string> order
        return "{" + ",".join(_string(k) + ":" + _dump(v[k]) for k in keys) + "}"
    raise TypeError("not a JSON value: %r" % (v,))
