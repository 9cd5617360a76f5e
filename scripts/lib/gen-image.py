#!/usr/bin/env python3
"""Writes a deterministic benchmark disk image: SIZE_MIB MiB in 4 MiB blocks, 40% zeros, 40%
text-like (compressible), 20% random (incompressible). Usage: gen-image.py PATH SIZE_MIB [SEED]"""
import random
import sys

path, size_mib = sys.argv[1], int(sys.argv[2])
rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 42)
CH = 4 << 20
words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(2, 10)))
         for _ in range(5000)]


def text_block(n):
    out, total = [], 0
    while total < n:
        line = ' '.join(rng.choice(words) for _ in range(rng.randint(4, 14))) + '\n'
        out.append(line)
        total += len(line)
    return ''.join(out).encode()[:n]


pool = text_block(16 << 20)
with open(path, 'wb') as f:
    for i in range(size_mib // 4):
        kind = i % 5
        if kind in (0, 1):
            f.seek(CH, 1)  # a hole: reads as zeros
        elif kind in (2, 3):
            start = rng.randrange(0, len(pool) - CH)
            head = f'chunk {i}\n'.encode()
            f.write(head + pool[start:start + CH - len(head)])
        else:
            f.write(rng.randbytes(CH))
    f.truncate((size_mib // 4) * CH)
