#!/usr/bin/env python3
"""End-to-end efficiency of `rewind run` against DuckDB and the parse limit, in the same run.

    python3 bench/compare.py                 # the final table of docs/performance.md: both
                                             # `rewind gen` profiles (easy, and hard: escapes,
                                             # shuffled keys, pretty-printed events, unicode,
                                             # odd numbers), ~250 MB each (4 hours x 12 x 5 MB),
                                             # each contender 3 times, alternating
    BENCH_PROFILE=hard BENCH_HOURS=2 BENCH_ROUNDS=5 python3 bench/compare.py
    BENCH_BINS=release=target/release/rewind,dist=target/dist/rewind python3 bench/compare.py
                                             # also: builds against each other, alternating

Contenders: `rewind run --workers 2` (decode -> zstd Parquet), DuckDB
`read_json(format='unstructured')` -> `COPY TO parquet (zstd)` with 2 threads, and the parse
limit: serde_json reading the same files into the event's top-level fields with `data` raw, one
thread, no output (`worker/examples/parse_limit.rs`). MB/CPU-s and wall MB/s come from each
contender's run with the least CPU; peak RSS is the highest over the rounds.

REWIND_BIN picks the binary of the main comparison (default target/release/rewind).

Needs: `pip install duckdb` and a release build (`cargo build --release -p rewind-cli` and
`cargo build --release -p rewind-worker --example parse_limit`; the script builds them when
missing, not when stale). Each contender runs as a child process; its CPU time
(user + sys) and peak RSS come from wait4(), so the figures are MB of input per CPU-second.
Compare ratios, not absolute numbers: these machines are shared and noisy.
"""
import json, os, shutil, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import measured  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
BIN = os.environ.get("REWIND_BIN", os.path.join(ROOT, "target", "release", "rewind"))


def gen(path, hours, per_hour, object_mb, profile="easy"):
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([BIN, "gen", "--out", path, "--org", "TN-bench", "--start", "2024-04-01T00",
                    "--hours", str(hours), "--objects-per-hour", str(per_hour),
                    "--object-mb", str(object_mb), "--seed", "7", "--profile", profile],
                   check=True, stdout=subprocess.DEVNULL)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def rewind(src, hours, workers, binary=None):
    dest = os.path.join(OUT, "rewind-dest")
    shutil.rmtree(dest, ignore_errors=True)
    end = f"2024-04-01T{hours - 1:02d}"
    cpu, wall, rss, out = measured([binary or BIN, "run", "--source", src, "--org", "TN-bench", "--start", "2024-04-01T00",
                                 "--end", end, "--dest", dest, "--json", "--workers", str(workers)])
    return cpu, wall, rss, json.loads(out)["recovered"]


DUCK = """
import duckdb, sys
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute(f"COPY (SELECT * FROM read_json('{sys.argv[1]}/**/*', format='unstructured')) TO '{sys.argv[2]}' (FORMAT parquet, COMPRESSION zstd)")
print(con.execute(f"SELECT count(*) FROM '{sys.argv[2]}'").fetchone()[0])
"""


def duckdb(src):
    dest = os.path.join(OUT, "duckdb.parquet")
    if os.path.exists(dest):
        os.remove(dest)
    cpu, wall, rss, out = measured([sys.executable, "-c", DUCK, src, dest])
    return cpu, wall, rss, int(out)


PARSE_LIMIT = os.path.join(ROOT, "target", "release", "examples", "parse_limit")


def parse_limit(src):
    cpu, wall, rss, out = measured([PARSE_LIMIT, src])
    return cpu, wall, rss, json.loads(out)["events"]


CONTENDERS = [("rewind run --workers 2", lambda src, hours: rewind(src, hours, 2)),
              ("duckdb unstructured", lambda src, hours: duckdb(src)),
              ("parse limit (serde_json)", lambda src, hours: parse_limit(src))]


def final_table(hours, per_hour, object_mb, profiles, rounds):
    """Each contender on each profile, alternating, `rounds` times: the run with the least CPU
    gives MB/CPU-s and wall MB/s, peak RSS is the highest seen over the rounds."""
    src = os.path.join(OUT, "archive")
    rows = []
    for profile in profiles:
        size = gen(src, hours, per_hour, object_mb, profile)
        mb = size / 1e6
        print(f"input ({profile}): {mb:.0f} MB in {hours * per_hour} objects of {object_mb} MB; "
              f"best of {rounds} alternating rounds")
        best, peak = {}, {}
        for _ in range(rounds):
            for name, run in CONTENDERS:
                r = run(src, hours)
                if name not in best or r[0] < best[name][0]:
                    best[name] = r
                peak[name] = max(peak.get(name, 0), r[2])
        events = {best[name][3] for name, _ in CONTENDERS}
        if len(events) != 1:
            print(f"WARNING: event counts differ: { {n: best[n][3] for n, _ in CONTENDERS} }")
        rate = {name: mb / best[name][0] for name, _ in CONTENDERS}
        for name, _ in CONTENDERS:
            cpu, wall, _, n = best[name]
            rows.append((profile, name, n, cpu, mb / wall, rate[name], peak[name],
                         rate[name] / rate["duckdb unstructured"]))
        print(f"  rewind / duckdb ({profile}): {rate['rewind run --workers 2'] / rate['duckdb unstructured']:.2f}x, "
              f"rewind / parse limit: {rate['rewind run --workers 2'] / rate['parse limit (serde_json)']:.2f}x")
    print()
    print("| profile | contender | events | CPU s | wall MB/s | MB/CPU-s | peak RSS MB | x DuckDB (MB/CPU-s) |")
    print("|---|---|---|---|---|---|---|---|")
    for profile, name, n, cpu, wall_rate, rate, rss, vs in rows:
        print(f"| {profile} | {name} | {n:,} | {cpu:.2f} | {wall_rate:.0f} | {rate:.0f} | {rss:.0f} | {vs:.2f} |")
    print()


def main():
    hours = int(os.environ.get("BENCH_HOURS", "4"))
    per_hour = int(os.environ.get("BENCH_OBJECTS_PER_HOUR", "12"))
    object_mb = float(os.environ.get("BENCH_OBJECT_MB", "5"))
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "-p", "rewind-cli"], cwd=ROOT, check=True)
    if not os.path.exists(PARSE_LIMIT):
        subprocess.run(["cargo", "build", "--release", "-p", "rewind-worker", "--example", "parse_limit"],
                       cwd=ROOT, check=True)
    os.makedirs(OUT, exist_ok=True)
    src = os.path.join(OUT, "archive")
    wanted = os.environ.get("BENCH_PROFILE", "both")
    profiles = ["easy", "hard"] if wanted == "both" else [wanted]
    final_table(hours, per_hour, object_mb, profiles, int(os.environ.get("BENCH_ROUNDS", "3")))

    # Builds against each other (profiles, before/after a change): alternating, best of N.
    bins = [b.split("=", 1) for b in os.environ.get("BENCH_BINS", "").split(",") if "=" in b]
    if bins:
        mb = gen(src, hours, per_hour, object_mb) / 1e6
        rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
        best = {name: None for name, _ in bins}
        for _ in range(rounds):
            for name, path in bins:
                r = rewind(src, hours, 2, os.path.join(ROOT, path))
                if best[name] is None or r[0] < best[name][0]:
                    best[name] = r
        base = mb / best[bins[0][0]][0]
        print(f"builds, best of {rounds} alternating runs:")
        for name, path in bins:
            cpu, wall, rss, n = best[name]
            print(f"  {name:12}{n:>10}{cpu:>8.2f}{wall:>8.2f}{mb / cpu:>10.0f} MB/CPU-s"
                  f"{rss:>6.0f} MB RSS  ({(mb / cpu) / base:.2f}x {bins[0][0]})  {path}")

    # Peak RSS must not grow with object size: same bytes, objects 4x larger.
    small = gen(src, 1, 16, object_mb / 2)
    rs = rewind(src, 1, 2)
    large = gen(src, 1, 2, object_mb * 4)
    rl = rewind(src, 1, 2)
    print(f"peak RSS, 1 hour: {small / 1e6:.0f} MB in {object_mb / 2} MB objects -> {rs[2]:.0f} MB; "
          f"{large / 1e6:.0f} MB in {object_mb * 4} MB objects -> {rl[2]:.0f} MB")


if __name__ == "__main__":
    main()
