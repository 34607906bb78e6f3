#!/usr/bin/env python3
"""Create or delete many small files, for scripts/bench-native.

    smallfiles.py create ROOT COUNT DIRS SIZE DEADLINE_SECS
    smallfiles.py delete ROOT COUNT DIRS DEADLINE_SECS

create makes ROOT/dNN/ (DIRS directories) and COUNT files fNNNNNN of SIZE
random bytes spread round-robin over them (open O_CREAT|O_EXCL, one write,
close); every file's content is fresh from os.urandom, generated before the
clock starts, so nothing repeats within a run or across runs. delete unlinks
the same files and removes the directories and ROOT. Only the loop is timed.
Prints one JSON object: {"files": done, "seconds": elapsed, "per_second"}.
It stops at the deadline, so a slow filesystem yields a partial count.
"""
import json
import os
import sys
import time


def paths(root, count, dirs):
    return [os.path.join(root, f"d{i % dirs:02d}", f"f{i:06d}") for i in range(count)]


def main():
    op, root, count, dirs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    files = paths(root, count, dirs)
    done = 0
    if op == "create":
        size, deadline = int(sys.argv[5]), float(sys.argv[6])
        pool = memoryview(os.urandom(size * count))
        t0 = time.perf_counter()
        stop = t0 + deadline
        os.mkdir(root)
        for d in range(dirs):
            os.mkdir(os.path.join(root, f"d{d:02d}"))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        for i, p in enumerate(files):
            fd = os.open(p, flags, 0o644)
            try:
                os.write(fd, pool[i * size:(i + 1) * size])
            finally:
                os.close(fd)
            done += 1
            if done % 64 == 0 and time.perf_counter() > stop:
                break
        dt = time.perf_counter() - t0
    elif op == "delete":
        deadline = float(sys.argv[5])
        t0 = time.perf_counter()
        stop = t0 + deadline
        for p in files:
            os.unlink(p)
            done += 1
            if done % 64 == 0 and time.perf_counter() > stop:
                break
        if done == count:
            for d in range(dirs):
                os.rmdir(os.path.join(root, f"d{d:02d}"))
            os.rmdir(root)
        dt = time.perf_counter() - t0
    else:
        sys.exit(f"unknown operation {op}")
    print(json.dumps({"files": done, "seconds": dt, "per_second": done / dt if dt > 0 else 0.0}))


if __name__ == "__main__":
    main()
