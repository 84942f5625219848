#!/usr/bin/env python3
"""Generates a synthetic photo library for benchmarks: N files in folders of 100, each a real
fixture JPEG (so metadata parsing runs) padded with seeded random bytes to SIZE, every file
unique. Usage: gen_tree.py DIR N SIZE_BYTES"""
import os, random, sys

def main():
    out, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    here = os.path.dirname(os.path.abspath(__file__))
    base = open(os.path.join(here, "..", "crates/library/tests/fixtures/library/plain/IMG_0010.JPG"), "rb").read()
    rng = random.Random(42)
    pad = rng.randbytes(max(size - len(base), 0) + 4096)
    for i in range(n):
        d = os.path.join(out, f"{i // 100:05d}")
        if i % 100 == 0:
            os.makedirs(d, exist_ok=True)
        # A unique 8-byte tag after the JPEG keeps every hash distinct without new random data.
        body = base + i.to_bytes(8, "little") + pad[(i * 7) % 4096:][: max(size - len(base) - 8, 0)]
        with open(os.path.join(d, f"IMG_{i % 10000:04d}.JPG"), "wb") as f:
            f.write(body)

if __name__ == "__main__":
    main()
