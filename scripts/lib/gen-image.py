#!/usr/bin/env python3
"""Writes a deterministic benchmark disk image: SIZE_MIB MiB in 4 MiB blocks, 40% zeros, 40%
text-like (compressible), 20% random (incompressible). Usage: gen-image.py PATH SIZE_MIB [SEED]
[--sparse] (--sparse: zero blocks are holes instead of written zeros; same content)."""
import random
import sys

args = [a for a in sys.argv[1:] if a != '--sparse']
sparse = '--sparse' in sys.argv[1:]
path, size_mib = args[0], int(args[1])
rng = random.Random(int(args[2]) if len(args) > 2 else 42)
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
            if sparse:
                f.seek(CH, 1)
            else:
                f.write(bytes(CH))
        elif kind in (2, 3):
            start = rng.randrange(0, len(pool) - CH)
            head = f'chunk {i}\n'.encode()
            f.write(head + pool[start:start + CH - len(head)])
        else:
            f.write(rng.randbytes(CH))
    f.truncate((size_mib // 4) * CH)
