#!/usr/bin/env python3
"""One-hour jobs on every core: `rewind run` over one hour of 12 x 5 MB objects (one shard),
with reading/decompressing ahead and the Parquet encoder on threads of their own (the default)
against everything on the shard's thread (`REWIND_PREFETCH=0 REWIND_ENCODE_INLINE=1`, what every
release before did), and each alone, alternating, in one run.

    python3 bench/one_hour.py                      # hard profile, 5 rounds
    BENCH_PROFILE=easy BENCH_ROUNDS=3 python3 bench/one_hour.py
    BENCH_COMPRESSION=gzip python3 bench/one_hour.py   # gzip objects (as many archives are)
    BENCH_BEFORE=/tmp/rewind-old python3 bench/one_hour.py  # also an older build, one thread
                                                   # (the issue's "today"), in the same rounds

Prints wall seconds, CPU seconds and peak RSS of each (medians) and the wall-time ratio. Needs a
release build (built when missing). Compare the ratio, not absolute times: shared machines.
"""
import json, os, shutil, statistics, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import measured  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
BIN = os.environ.get("REWIND_BIN", os.path.join(ROOT, "target", "release", "rewind"))


def main():
    profile = os.environ.get("BENCH_PROFILE", "hard")
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "-p", "rewind-cli"], cwd=ROOT, check=True)
    os.makedirs(OUT, exist_ok=True)
    compression = os.environ.get("BENCH_COMPRESSION", "none")
    src = os.path.join(OUT, f"one-hour-{profile}-{compression}")
    if not os.path.exists(src):
        subprocess.run([BIN, "gen", "--out", src, "--org", "TN-bench", "--start", "2024-04-01T00",
                        "--hours", "1", "--objects-per-hour", "12", "--object-mb", "5",
                        "--seed", "7", "--profile", profile, "--compression", compression],
                       check=True, stdout=subprocess.DEVNULL)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(src) for f in fs)
    dest = os.path.join(OUT, "one-hour-dest")
    modes = {  # name: (REWIND_PARALLEL_OBJECTS, REWIND_PREFETCH, REWIND_ENCODE_INLINE, binary)
        "one thread": ("0", "0", "1", BIN),
        "encoder": ("0", "0", "0", BIN),
        "enc+ahead": ("0", "1", "0", BIN),
        "parallel": ("1", "1", "0", BIN),
        "default": (None, None, None, BIN),  # what the binary chooses by itself
    }
    before = os.environ.get("BENCH_BEFORE")
    if before:
        modes = {"before": ("0", "0", "1", before), **modes}
    results = {name: [] for name in modes}
    events = set()
    for _ in range(rounds):
        for name, (parallel, prefetch, inline, binary) in modes.items():
            shutil.rmtree(dest, ignore_errors=True)
            env = {k: v for k, v in os.environ.items()
                   if k not in ("REWIND_PARALLEL_OBJECTS", "REWIND_PREFETCH", "REWIND_ENCODE_INLINE")}
            if parallel is not None:
                env["REWIND_PARALLEL_OBJECTS"] = parallel
                env["REWIND_PREFETCH"] = prefetch
                env["REWIND_ENCODE_INLINE"] = inline
            cpu, wall, rss, out = measured(
                [binary, "run", "--source", src, "--org", "TN-bench", "--start", "2024-04-01T00",
                 "--end", "2024-04-01T00", "--dest", dest, "--json", "--workers", "2"], env)
            events.add(json.loads(out)["recovered"])
            results[name].append((wall, cpu, rss))
    if len(events) != 1:
        sys.exit(f"the two ways recovered different counts: {events}")
    print(f"one hour, 12 objects, {size / 1e6:.0f} MB stored ({profile} profile, {compression}), "
          f"{rounds} rounds, {events.pop()} events")
    med = {}
    for name, rs in results.items():
        wall = statistics.median(r[0] for r in rs)
        cpu = statistics.median(r[1] for r in rs)
        rss = max(r[2] for r in rs)
        med[name] = wall
        print(f"  {name:<10} wall {wall:6.2f} s  cpu {cpu:6.2f} s  "
              f"{size / 1e6 / wall:6.1f} MB/s wall  {size / 1e6 / cpu:6.1f} MB/CPU-s  "
              f"peak RSS {rss:5.0f} MB")
    for name in ("encoder", "enc+ahead", "parallel", "default"):
        print(f"  wall-time speed-up of {name} over one thread: "
              f"{med['one thread'] / med[name]:.2f}x")
    if before:
        print(f"  wall-time speed-up of default over the older build on one thread: "
              f"{med['before'] / med['default']:.2f}x  ({before})")


if __name__ == "__main__":
    main()
