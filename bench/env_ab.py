#!/usr/bin/env python3
"""A/B of `rewind run --workers 2` with and without one environment setting, alternating, in
one run (compare the ratio: shared machines).

    python3 bench/env_ab.py MALLOC_ARENA_MAX=16   # B = glibc's default arenas on 2 cores (A: the
                                                  # binary's own, one per four cores)
    BENCH_PROFILE=easy BENCH_HOURS=2 python3 bench/env_ab.py REWIND_PARALLEL_OBJECTS=0
    BENCH_B_BIN=/tmp/rewind-new python3 bench/env_ab.py   # B = another build (A: REWIND_BIN or
                                                          # target/release/rewind)

Input: `rewind gen` of BENCH_HOURS (default 4) hours x 12 objects x 5 MB of BENCH_PROFILE
(default hard), generated once into bench/out. Prints the medians of BENCH_ROUNDS (default 5)
rounds: wall, CPU, MB per CPU-second, peak RSS, and B's CPU over A's. Needs a release build.
"""
import json, os, shutil, statistics, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import measured  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
BIN = os.environ.get("REWIND_BIN", os.path.join(ROOT, "target", "release", "rewind"))


def main():
    b_bin = os.environ.get("BENCH_B_BIN")
    if (len(sys.argv) < 2 and not b_bin) or any("=" not in a for a in sys.argv[1:]):
        sys.exit("usage: [BENCH_B_BIN=build] env_ab.py NAME=VALUE...  (the B side's settings)")
    b_env = dict(a.split("=", 1) for a in sys.argv[1:])
    profile = os.environ.get("BENCH_PROFILE", "hard")
    hours = int(os.environ.get("BENCH_HOURS", "4"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "-p", "rewind-cli"], cwd=ROOT, check=True)
    src = os.path.join(OUT, f"ab-{profile}-{hours}h")
    if not os.path.exists(src):
        subprocess.run([BIN, "gen", "--out", src, "--org", "TN-bench", "--start", "2024-04-01T00",
                        "--hours", str(hours), "--objects-per-hour", "12", "--object-mb", "5",
                        "--seed", "7", "--profile", profile], check=True,
                       stdout=subprocess.DEVNULL)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(src) for f in fs)
    dest = os.path.join(OUT, "ab-dest")
    end = f"2024-04-01T{hours - 1:02d}"
    results = {"A": [], "B": []}
    counts = set()
    for _ in range(rounds):
        for side in ("A", "B"):
            shutil.rmtree(dest, ignore_errors=True)
            env = {k: v for k, v in os.environ.items() if k not in b_env}
            if side == "B":
                env.update(b_env)
            binary = b_bin if side == "B" and b_bin else BIN
            cpu, wall, rss, out = measured(
                [binary, "run", "--source", src, "--org", "TN-bench", "--start", "2024-04-01T00",
                 "--end", end, "--dest", dest, "--json", "--workers", "2"], env)
            counts.add(json.loads(out)["recovered"])
            results[side].append((wall, cpu, rss))
    if len(counts) != 1:
        sys.exit(f"A and B recovered different counts: {counts}")
    print(f"{hours} hours, {size / 1e6:.0f} MB ({profile} profile), {rounds} rounds; "
          f"B = {' '.join(([b_bin] if b_bin else []) + sys.argv[1:])}")
    med = {}
    for side, rs in results.items():
        wall = statistics.median(r[0] for r in rs)
        cpu = statistics.median(r[1] for r in rs)
        rss = max(r[2] for r in rs)
        med[side] = cpu
        print(f"  {side}: wall {wall:6.2f} s  cpu {cpu:6.2f} s  {size / 1e6 / cpu:6.1f} MB/CPU-s  "
              f"peak RSS {rss:5.0f} MB")
    print(f"  CPU of B over A: {med['B'] / med['A']:.3f}")


if __name__ == "__main__":
    main()
