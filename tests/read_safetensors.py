#!/usr/bin/python3
"""Independent safetensors reader (standard library only) used by test_safetensors as an oracle.

Usage: read_safetensors.py FILE
Parses FILE, checks the layout rules slmlab's writer follows (8 + header length a multiple of 8,
trailing-space padding, known dtypes, non-negative shapes, offsets that match dtype and shape and
cover the data buffer contiguously in sorted name order, no duplicate keys, string metadata), and
prints {"metadata": {...}, "tensors": {name: {"dtype", "shape", "values": [...]}}} with values
flattened in row-major order (BF16 and F16 as raw uint16 bit patterns). Exits 1 with a message on
any violation.
"""
import json
import struct
import sys

# dtype -> (item size, struct format of one item)
DTYPES = {
    "F64": (8, "d"),
    "F32": (4, "f"),
    "BF16": (2, "H"),
    "F16": (2, "H"),
    "I64": (8, "q"),
    "I32": (4, "i"),
    "I16": (2, "h"),
    "I8": (1, "b"),
    "U8": (1, "B"),
    "BOOL": (1, "B"),
}


class LayoutError(Exception):
    pass


def no_duplicates(pairs):
    """object_pairs_hook: a dict, refusing repeated keys (json.loads would keep the last)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise LayoutError(f"duplicate header key {k!r}")
        out[k] = v
    return out


def is_index(v):
    """True for a non-negative JSON integer (bool is not one)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def parse(blob):
    """Validates the file contents and returns (metadata, [(name, dtype, shape, values)]) in file order."""
    if len(blob) < 8:
        raise LayoutError(f"file is {len(blob)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise LayoutError(f"header length {n} exceeds the {len(blob) - 8} bytes after the prefix")
    if (8 + n) % 8 != 0:
        raise LayoutError(f"8 + header length {n} is not a multiple of 8")
    try:
        text = blob[8:8 + n].decode("utf-8")
    except UnicodeDecodeError as e:
        raise LayoutError(f"header is not UTF-8: {e}")
    body = text.rstrip(" ")
    if not body.startswith("{") or not body.endswith("}"):
        raise LayoutError("header is not a JSON object padded with trailing spaces")
    try:
        header = json.loads(body, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise LayoutError(f"header is not valid JSON: {e}")
    data = blob[8 + n:]

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict):
        raise LayoutError("__metadata__ is not an object")
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise LayoutError(f"metadata {k!r} is not a string")

    entries = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise LayoutError(f"tensor {name!r} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise LayoutError(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(is_index(d) for d in shape):
            raise LayoutError(f"tensor {name!r} shape {shape!r} is not a list of non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_index(o) for o in offsets):
            raise LayoutError(f"tensor {name!r} data_offsets {offsets!r} is not [begin, end]")
        begin, end = offsets
        if begin > end or end > len(data):
            raise LayoutError(f"tensor {name!r} data_offsets {offsets} outside the {len(data)}-byte buffer")
        numel = 1
        for d in shape:
            numel *= d
        size, fmt = DTYPES[dtype]
        if end - begin != numel * size:
            raise LayoutError(f"tensor {name!r} spans {end - begin} bytes, dtype and shape need {numel * size}")
        entries.append((begin, end, name, dtype, shape, numel))

    entries.sort()
    if [e[2] for e in entries] != sorted(e[2] for e in entries):
        raise LayoutError("tensors are not laid out in sorted name order")
    covered = 0
    tensors = []
    for begin, end, name, dtype, shape, numel in entries:
        if begin != covered:
            raise LayoutError(f"tensor {name!r} starts at {begin}, previous tensor ends at {covered}")
        covered = end
        values = list(struct.unpack(f"<{numel}{DTYPES[dtype][1]}", data[begin:end]))
        if dtype == "BOOL":
            if any(v > 1 for v in values):
                raise LayoutError(f"BOOL tensor {name!r} holds a byte other than 0 or 1")
            values = [bool(v) for v in values]
        tensors.append((name, dtype, shape, values))
    if covered != len(data):
        raise LayoutError(f"tensors cover {covered} bytes of the {len(data)}-byte data buffer")
    return metadata, tensors


def main():
    """Reads argv[1] and prints its JSON summary, or a message and exit status 1."""
    if len(sys.argv) != 2:
        sys.exit("usage: read_safetensors.py FILE")
    path = sys.argv[1]
    try:
        with open(path, "rb") as f:
            metadata, tensors = parse(f.read())
        summary = {
            "metadata": metadata,
            "tensors": {n: {"dtype": d, "shape": s, "values": v} for n, d, s, v in tensors},
        }
        print(json.dumps(summary, allow_nan=False))
    except (OSError, LayoutError, ValueError) as e:
        sys.exit(f"read_safetensors.py: {path}: {e}")


if __name__ == "__main__":
    main()
