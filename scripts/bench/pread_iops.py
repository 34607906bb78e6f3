#!/usr/bin/env python3
"""Random 4 KiB reads with os.pread on one open file; the fallback of
scripts/bench-archive when fio is missing (or --iops-tool pread).

    pread_iops.py PATH SIZE COUNT DEADLINE_SECS

Prints one JSON object: {"ios": done, "seconds": elapsed, "iops": ...}.
Offsets are distinct 4 KiB blocks drawn with a fixed seed, so every
filesystem gets the same sequence (what fio's random map also guarantees).
It stops at the deadline so a slow peer yields a partial count, not a hang.
"""
import json
import os
import random
import sys
import time

BS = 4096


def main():
    path, size, count, deadline = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    blocks = size // BS
    offsets = [b * BS for b in random.Random(4096).sample(range(blocks), min(count, blocks))]
    fd = os.open(path, os.O_RDONLY)
    try:
        # Same hint fio gives for random workloads (fadvise_hint=1), so the
        # kernel does not turn each 4 KiB read into a read-ahead window.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        done = 0
        t0 = time.perf_counter()
        stop = t0 + deadline
        for off in offsets:
            if len(os.pread(fd, BS, off)) != BS:
                sys.exit(f"short read at offset {off}")
            done += 1
            if done % 64 == 0 and time.perf_counter() > stop:
                break
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    print(json.dumps({"ios": done, "seconds": dt, "iops": done / dt if dt > 0 else 0.0}))


if __name__ == "__main__":
    main()
