#!/usr/bin/env python3
"""Landing-zone ingest, measured next to `rewind run` on the same bytes.

    python3 bench/ingest.py                      # 120 hours x 3 objects of 2 MB (~720 MB)
    BENCH_HOURS=24 BENCH_OBJECT_MB=1 python3 bench/ingest.py     # quicker

An archive is made with `rewind gen` (mixed compression: plain, gzip, zstd). In the same run:
- `rewind run` of the archive into Parquet (the yardstick: the same decode and write), and the
  same with `--partition-by` the distributor layout (what partitioning by fields costs);
- `rewind ingest` of the same objects, copied flat into a landing zone's `pending/` with other
  names, into a trusted zone with the distributor layout (no dedup);
- the same with `--dedup event_id` (the batch's keys checked, nothing in the trusted zone yet);
- a re-drop of 10% of the objects into the now full trusted zone with `--dedup event_id` (every
  touched partition's key columns read; all of the batch's rows are duplicates).
CPU time (user + sys) and wall time of each child come from wait4(); figures are MB of archive
(as stored) per CPU-second and ratios within the run (these machines are shared and noisy).

Needs a release build (built if missing).
"""
import os, shutil, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import measured  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out", "ingest")
BIN = os.environ.get("REWIND_BIN", os.path.join(ROOT, "target", "release", "rewind"))
ORG = "TN-bench"
DISTRIBUTOR = "domain_event_type={domain}-{event_type}/year={ts:YYYY}/month={ts:MM}/day={ts:DD}"


def child(args):
    """Runs a command; (cpu_seconds, wall_seconds)."""
    cpu, wall, _, _ = measured(args)
    return cpu, wall


def landing(src, name, every=1):
    """Copies every `every`-th archive object flat into a fresh landing zone's pending/."""
    root = os.path.join(OUT, name)
    shutil.rmtree(root, ignore_errors=True)
    pending = os.path.join(root, "pending")
    os.makedirs(pending)
    n = 0
    for dirpath, _, names in sorted(os.walk(src)):
        for f in sorted(names):
            if n % every == 0:
                shutil.copyfile(os.path.join(dirpath, f), os.path.join(pending, f"drop-{n:06}.bin"))
            n += 1
    return pending


def size_of(d):
    return sum(os.path.getsize(os.path.join(p, f)) for p, _, fs in os.walk(d) for f in fs)


def main():
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "-p", "rewind-cli"], cwd=ROOT, check=True)
    hours = int(os.environ.get("BENCH_HOURS", "120"))
    object_mb = os.environ.get("BENCH_OBJECT_MB", "2")
    shutil.rmtree(OUT, ignore_errors=True)
    src = os.path.join(OUT, "archive")
    subprocess.run([BIN, "gen", "--out", src, "--org", ORG, "--start", "2024-04-01T00",
                    "--hours", str(hours), "--objects-per-hour", "3", "--object-mb", object_mb,
                    "--seed", "7", "--compression", "mixed"], check=True, stdout=subprocess.DEVNULL)
    mb = size_of(src) / 1e6
    import datetime
    end = (datetime.datetime(2024, 4, 1) + datetime.timedelta(hours=hours - 1)).strftime("%Y-%m-%dT%H")
    print(f"archive: {mb:.0f} MB in {hours * 3} objects (mixed compression), {os.cpu_count()} CPUs")

    run_cpu, run_wall = child([BIN, "run", "--source", src, "--org", ORG, "--start", "2024-04-01T00",
                               "--end", end, "--dest", os.path.join(OUT, "run"), "--json"])
    print(f"rewind run              {run_cpu:7.2f} CPU-s {run_wall:6.2f} s  {mb / run_cpu:6.1f} MB/CPU-s  1.00x")
    # The same job with the distributor layout: the cost of partitioning by fields.
    p_cpu, p_wall = child([BIN, "run", "--source", src, "--org", ORG, "--start", "2024-04-01T00",
                           "--end", end, "--dest", os.path.join(OUT, "run-partitioned"), "--json",
                           "--partition-by", DISTRIBUTOR])
    print(f"run --partition-by      {p_cpu:7.2f} CPU-s {p_wall:6.2f} s  {mb / p_cpu:6.1f} MB/CPU-s  "
          f"{(mb / p_cpu) / (mb / run_cpu):.2f}x")

    def ingest(name, pending, trusted, extra):
        cpu, wall = child([BIN, "ingest", "--source", pending, "--dest", trusted, "--org", ORG,
                           "--json"] + extra)
        m = mb if name != "re-drop" else size_of(os.path.join(os.path.dirname(pending), "processed")) / 1e6
        print(f"{name:23} {cpu:7.2f} CPU-s {wall:6.2f} s  {m / cpu:6.1f} MB/CPU-s  "
              f"{(m / cpu) / (mb / run_cpu):.2f}x of run's MB/CPU-s")

    ingest("ingest", landing(src, "plain"), os.path.join(OUT, "trusted-plain"), [])
    trusted = os.path.join(OUT, "trusted-dedup")
    ingest("ingest --dedup", landing(src, "dedup"), trusted, ["--dedup", "event_id"])
    ingest("re-drop", landing(src, "redrop", every=10), trusted, ["--dedup", "event_id"])


if __name__ == "__main__":
    main()
