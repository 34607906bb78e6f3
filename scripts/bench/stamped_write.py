#!/usr/bin/env python3
"""Write SIZE bytes of never-repeating random data to DST, for
scripts/bench-native and scripts/bench-offload.

    stamped_write.py BASE DST SIZE TAG [--fsync] [--hashes]

The data is BASE (a random file, read cyclically) with the first 32 bytes of
every MiB replaced by a stamp unique to (TAG, MiB index), exactly what
common.stamp_in_place does to a file: a file written with the same TAG has
the same content, and no 1 MiB chunk equals a chunk written with another TAG
(fsd deduplicates identical chunks, so repeated data would not be written).
Writes are 1 MiB each, sequential; --fsync calls fsync before closing.
Prints one JSON object: {"bytes", "seconds", "fsync_seconds", "hashes"?},
with --hashes the SHA-256 of every MiB (fsd's chunk names).
"""
import hashlib
import json
import os
import sys
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import MiB, STAMP, stamp_bytes  # noqa: E402


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    base, dst, size, tag = args[0], args[1], int(args[2]), args[3]
    base_size = os.path.getsize(base)
    if base_size < MiB or base_size % MiB:
        sys.exit("base file must be a positive multiple of 1 MiB")
    hashes = [] if "--hashes" in flags else None
    buf = bytearray(MiB)
    bfd = os.open(base, os.O_RDONLY)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    t0 = time.perf_counter()
    try:
        done, i = 0, 0
        while done < size:
            n = min(MiB, size - done)
            got = os.preadv(bfd, [buf], (i * MiB) % base_size)
            if got != MiB:
                sys.exit("short read from the base file")
            buf[:STAMP] = stamp_bytes(tag, i)
            view = memoryview(buf)[:n]
            if hashes is not None:
                hashes.append(hashlib.sha256(view).hexdigest())
            w = 0
            while w < n:
                w += os.write(fd, view[w:])
            done += n
            i += 1
        t1 = time.perf_counter()
        if "--fsync" in flags:
            os.fsync(fd)
    finally:
        os.close(fd)
        os.close(bfd)
    t2 = time.perf_counter()
    out = {"bytes": size, "seconds": t2 - t0, "fsync_seconds": t2 - t1}
    if hashes is not None:
        out["hashes"] = hashes
    print(json.dumps(out))


if __name__ == "__main__":
    main()
