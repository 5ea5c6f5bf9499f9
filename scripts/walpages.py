#!/usr/bin/env python3
"""Which pages musterd's commits write: reads a copy of the store's write-ahead log and of its
database, and prints how many frames each commit wrote, and per commit, to which table or
index (from SQLite's dbstat), over the last commits in the log. A figure to read beside
docs/benchmarks.md, not a test: every frame is two `pwrite` calls, a checksum, a page of the
writer's sync and later of a checkpoint.

    sh scripts/walpages.sh            # storms musterd, copies its store mid-storm, runs this
    python3 scripts/walpages.py DB    # DB and DB-wal, copied together from a data folder

Needs Python 3 with its sqlite3 module (Debian's python3), whose SQLite has dbstat.
"""
import collections
import os
import shutil
import sqlite3
import struct
import sys
import tempfile

LAST = 40  # commits counted for the per-table figures


def frames(wal):
    """The log's valid frames, (page, commit size or 0), oldest first."""
    data = open(wal, "rb").read()
    if len(data) < 32:
        return []
    _magic, _version, page_size, _seq, salt1, salt2, _c1, _c2 = struct.unpack(">8I", data[:32])
    out, off = [], 32
    while off + 24 + page_size <= len(data):
        page, size, s1, s2 = struct.unpack(">4I", data[off : off + 16])
        if (s1, s2) != (salt1, salt2):
            break
        out.append((page, size))
        off += 24 + page_size
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: walpages.py DB (with DB-wal beside it)")
    db = sys.argv[1]
    wal = db + "-wal"
    commits, current = [], []
    for page, size in frames(wal):
        current.append(page)
        if size:
            commits.append(current)
            current = []
    if not commits:
        sys.exit(f"walpages: no commit in {wal}")
    # What each page is, as of the log's last commit: dbstat over a copy with its log.
    with tempfile.TemporaryDirectory() as d:
        copy = os.path.join(d, "copy.db")
        shutil.copy(db, copy)
        shutil.copy(wal, copy + "-wal")
        c = sqlite3.connect(copy)
        pages = c.execute("SELECT pageno, name, pagetype FROM dbstat")
        kind = {p: f"{n} ({t})" for p, n, t in pages}
        c.close()
    last = commits[-LAST:]
    sizes = sorted(len(t) for t in commits)
    mean = sum(sizes) / len(sizes)
    print(f"{len(commits)} commits in the log, frames per commit: mean {mean:.1f}, "
          f"median {sizes[len(sizes) // 2]}, largest {sizes[-1]}")
    per = collections.Counter()
    for t in last:
        for page in set(t):
            per[kind.get(page, "a page freed since")] += 1
    each = sum(len(t) for t in last) / len(last)
    print(f"pages per commit, the last {len(last)} commits ({each:.1f} frames each):")
    for name, n in per.most_common():
        print(f"  {n / len(last):6.2f}  {name}")


if __name__ == "__main__":
    main()
