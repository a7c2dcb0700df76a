"""A GGUF with a real model's header (metadata, tokenizer, tensor shapes and
types) and synthetic weights: for measuring decode speed on a machine the
real file cannot reach (the GPU machine takes 64 MiB per call; SmolLM2's
Q4_1 GGUF is 94 MB, its header about 2 MB). The weights are valid blocks
of random values (finite scales, random quants; norms of ones), so the
kernels do the work they do on the real model; the text generated is
noise. Standard library only.

    python3 synthetic_gguf.py header MODEL.gguf OUT.header   # keep the header
    python3 synthetic_gguf.py make OUT.header OUT.gguf       # weights from it
"""
import os
import struct
import sys

# ggml type: (elements per block, bytes per block, block maker)
F16_SCALE = struct.pack("<e", 0.02)
F16_MIN = struct.pack("<e", -0.15)


def _q4_0(quants):
    return F16_SCALE + quants[:16]


def _q4_1(quants):
    return F16_SCALE + F16_MIN + quants[:16]


def _q8_0(quants):
    return F16_SCALE + quants[:32]


TYPES = {
    0: (1, 4, None),  # F32
    1: (1, 2, None),  # F16
    2: (32, 18, _q4_0),
    3: (32, 20, _q4_1),
    8: (32, 34, _q8_0),
}

# GGUF metadata value types and their fixed sizes (8: string, 9: array).
SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("the GGUF header is cut short")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def string(self):
        return self.take(self.u64()).decode("utf-8", "replace")

    def value(self, kind):
        if kind in SCALARS:
            raw = self.take(SCALARS[kind])
            return struct.unpack({1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[len(raw)], raw)[0]
        if kind == 8:
            return self.string()
        if kind == 9:
            item, count = self.u32(), self.u64()
            return [self.value(item) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {kind}")


def parse(data):
    """(tensors, data_offset): each tensor as (name, dims, type, offset)."""
    r = Reader(data)
    if r.take(4) != b"GGUF":
        raise ValueError("not a GGUF file")
    version = r.u32()
    if version < 2:
        raise ValueError(f"GGUF version {version} is not supported")
    n_tensors, n_kv = r.u64(), r.u64()
    alignment = 32
    for _ in range(n_kv):
        key = r.string()
        value = r.value(r.u32())
        if key == "general.alignment":
            alignment = value
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.u64() for _ in range(r.u32())]
        tensors.append((name, dims, r.u32(), r.u64()))
    return tensors, (r.pos + alignment - 1) // alignment * alignment


def header(model, out):
    """Writes the header of the GGUF at `model` (everything before its
    tensor data) to `out`."""
    with open(model, "rb") as f:
        head = f.read(64 << 20)
    _, offset = parse(head)
    with open(out, "wb") as f:
        f.write(head[:offset])
    return offset


def make(head_path, out, seed=7):
    """Writes a GGUF with the header at `head_path` and synthetic weights to
    `out`. Returns its size in bytes."""
    with open(head_path, "rb") as f:
        head = f.read()
    tensors, offset = parse(head)
    rng = __import__("random").Random(seed)
    # A pool of random quant bytes; blocks repeat it with a shifting start.
    pool = bytes(rng.getrandbits(8) for _ in range(1 << 16))
    with open(out, "wb") as f:
        f.write(head[:offset])
        for name, dims, kind, rel in sorted(tensors, key=lambda t: t[3]):
            if kind not in TYPES:
                raise ValueError(f"{name}: ggml type {kind} is not synthesized")
            elements = 1
            for d in dims:
                elements *= d
            per_block, block_bytes, maker = TYPES[kind]
            f.write(b"\0" * (offset + rel - f.tell()))
            if maker is None:
                one = struct.pack("<f", 1.0) if kind == 0 else struct.pack("<e", 1.0)
                f.write(one * elements)
                continue
            blocks = elements // per_block
            # 4096 distinct blocks, repeated.
            distinct = b"".join(maker(pool[(i * 37) % (len(pool) - 32):][:32]) for i in range(4096))
            whole, rest = divmod(blocks, 4096)
            f.write(distinct * whole + distinct[:rest * block_bytes])
    return os.path.getsize(out)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("header", "make"):
        sys.exit(__doc__)
    if sys.argv[1] == "header":
        print(header(sys.argv[2], sys.argv[3]))
    else:
        print(make(sys.argv[2], sys.argv[3]))
