#!/usr/bin/env python3
"""Keyed repair and rollback, measured.

    python3 bench/repair.py                  # ~1 GB of Parquet in 200 files (200 hours)
    BENCH_HOURS=40 BENCH_OBJECT_MB=4 python3 bench/repair.py     # quicker
    BENCH_DELTA=1 python3 bench/repair.py    # also: the same job and repairs on a Delta table
    BENCH_S3=1 python3 bench/repair.py       # also: rollback of a 200-file change on moto,
                                             # versioned and not, requests counted

A dataset is made with `rewind gen` + `rewind run` (one file per hour). Then, in the same run:
- `rewind repair --delete` of 1,000 random event ids (spread: nearly every file holds one) and
  of 1,000 ids drawn from two files (clustered), each followed by `rewind rollback`;
- a full rewrite of the dataset without those ids by DuckDB (what a notebook does), as the
  yardstick.
CPU time (user + sys) and wall time of each child come from wait4(); figures are MB of dataset
per CPU-second and ratios within the run (these machines are shared and noisy).

Needs: `pip install duckdb pyarrow` (and moto for BENCH_S3), a release build (built if missing).
"""
import json, os, random, re, shutil, socket, subprocess, sys, tempfile, time

from benchlib import free_port, measured

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out", "repair")
BIN = os.environ.get("REWIND_BIN", os.path.join(ROOT, "target", "release", "rewind"))


def child(args, env=None):
    """Runs a command; (cpu_seconds, wall_seconds, stdout)."""
    cpu, wall, _, out = measured(args, env)
    return cpu, wall, out


def last_hour(hours):
    import datetime
    return (datetime.datetime(2024, 4, 1) + datetime.timedelta(hours=hours - 1)).strftime("%Y-%m-%dT%H")


def dataset(hours, per_hour, object_mb, delta=False):
    src, dest = os.path.join(OUT, "archive"), os.path.join(OUT, "dataset")
    table = os.path.join(OUT, "table")
    for d in (src, dest, table):
        shutil.rmtree(d, ignore_errors=True)
    subprocess.run([BIN, "gen", "--out", src, "--org", "TN-bench", "--start", "2024-04-01T00",
                    "--hours", str(hours), "--objects-per-hour", str(per_hour),
                    "--object-mb", str(object_mb), "--seed", "7"], check=True,
                   stdout=subprocess.DEVNULL)
    end = last_hour(hours)
    job = [BIN, "run", "--source", src, "--org", "TN-bench", "--start", "2024-04-01T00",
           "--end", end, "--json"]
    cpu, wall, _ = child(job + ["--dest", dest])
    if delta:
        # The same job into a Delta table, run right after: the commit's cost as a ratio.
        d_cpu, d_wall, _ = child(job + ["--dest", table, "--table-format", "delta"])
        print(f"job into Parquet {cpu:6.2f} CPU-s {wall:6.2f} s; into a Delta table "
              f"{d_cpu:6.2f} CPU-s {d_wall:6.2f} s -> {d_cpu / cpu:.2f}x CPU")
    shutil.rmtree(src)
    return dest, table if delta else None


def files(dest):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs
                  if f.endswith(".parquet") and "/_" not in os.path.join(d, f)[len(dest):])


def ids_of(paths):
    import pyarrow.parquet as pq
    out = []
    for p in paths:
        out.extend(pq.read_table(p, columns=["event_id"]).column("event_id").to_pylist())
    return out


DUCK = """
import duckdb, sys
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute(f"CREATE TABLE k AS SELECT column0 AS id FROM read_csv('{sys.argv[2]}', header=false, columns={{'column0': 'VARCHAR'}})")
con.execute(f"COPY (SELECT * FROM read_parquet('{sys.argv[1]}/execution_id=*/**/*.parquet') WHERE event_id NOT IN (SELECT id FROM k)) TO '{sys.argv[3]}' (FORMAT parquet, COMPRESSION zstd)")
"""


def repair_case(name, dest, keys, mb, table=None):
    path = os.path.join(OUT, f"keys-{name}.txt")
    with open(path, "w") as f:
        f.write("\n".join(keys) + "\n")
    cpu, wall, out = child([BIN, "repair", "--dataset", dest, "--key", "event_id", "--delete", path,
                            "--json"])
    r = json.loads(out)
    rb_cpu, rb_wall, _ = child([BIN, "rollback", "--dest", dest])
    if table:
        # The same repair of the Delta table (rewrites as new files, one remove+add commit).
        t_cpu, t_wall, t_out = child([BIN, "repair", "--dataset", table, "--key", "event_id",
                                      "--delete", path, "--json"])
        t = json.loads(t_out)
        trb_cpu, trb_wall, _ = child([BIN, "rollback", "--dest", table])
        print(f"  delta: repair {t_cpu:6.2f} CPU-s {t_wall:6.2f} s ({t_cpu / cpu:.2f}x the CPU of "
              f"the Parquet repair; files read {t['files_read']}, rewritten "
              f"{t['files_rewritten']}); rollback {trb_cpu:6.2f} CPU-s {trb_wall:6.2f} s "
              f"({trb_cpu / rb_cpu:.2f}x)")
    full = os.path.join(OUT, "full.parquet")
    d_cpu, d_wall, _ = child([sys.executable, "-c", DUCK, dest, path, full])
    os.remove(full)
    print(f"{name}: {len(keys)} keys -> files read {r['files_read']}/{r['files_in_dataset']}, "
          f"rewritten {r['files_rewritten']}, rows deleted {r['rows_deleted']}, "
          f"{r['bytes_read'] / 1e6:.0f} MB read, {r['bytes_written'] / 1e6:.0f} MB written")
    print(f"  repair   {cpu:6.2f} CPU-s {wall:6.2f} s  {mb / cpu:7.1f} MB of dataset/CPU-s")
    print(f"  full rewrite (DuckDB) {d_cpu:6.2f} CPU-s {d_wall:6.2f} s  {mb / d_cpu:7.1f} MB/CPU-s"
          f"  -> repair takes {cpu / d_cpu:.2f}x the CPU of a full rewrite")
    print(f"  rollback {rb_cpu:6.2f} CPU-s {rb_wall:6.2f} s ({r['files_rewritten']} files back)")


def s3_rollback(hours):
    """A 200-file change on moto, versioned and not: requests and seconds of its rollback."""
    port = free_port()
    log = open(os.path.join(OUT, "moto.log"), "w+")
    moto = subprocess.Popen(["moto_server", "-p", str(port)], stdout=log, stderr=log)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s",
               AWS_REGION="us-east-1")
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k",
                          aws_secret_access_key="s", region_name="us-east-1")
        src = os.path.join(OUT, "small-archive")
        shutil.rmtree(src, ignore_errors=True)
        subprocess.run([BIN, "gen", "--out", src, "--org", "TN-bench", "--start", "2024-04-01T00",
                        "--hours", str(hours), "--objects-per-hour", "1", "--object-mb", "0.05",
                        "--seed", "7"], check=True, stdout=subprocess.DEVNULL)
        end = last_hour(hours)
        flags = ["--endpoint-url", endpoint, "--force-path-style"]
        for bucket, versioned in (("versioned", True), ("plain", False)):
            s3.create_bucket(Bucket=bucket)
            if versioned:
                s3.put_bucket_versioning(Bucket=bucket,
                                         VersioningConfiguration={"Status": "Enabled"})
            dest = f"s3://{bucket}/ds"
            subprocess.run([BIN, "run", "--source", src, "--org", "TN-bench", "--start",
                            "2024-04-01T00", "--end", end, "--dest", dest, "--json"] + flags,
                           check=True, stdout=subprocess.DEVNULL, env=env)
            # One key from each file: the repair's change rewrites every file.
            local = tempfile.mkdtemp()
            keys = []
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="ds/")
            for page in pages:
                for o in page.get("Contents", []):
                    if o["Key"].endswith(".parquet"):
                        p = os.path.join(local, "f.parquet")
                        s3.download_file(bucket, o["Key"], p)
                        keys.append(ids_of([p])[0])
            path = os.path.join(OUT, "keys-s3.txt")
            with open(path, "w") as f:
                f.write("\n".join(keys) + "\n")
            child([BIN, "repair", "--dataset", dest, "--key", "event_id", "--delete", path]
                  + flags, env=env)
            log.flush()
            before = log.tell()
            cpu, wall, _ = child([BIN, "rollback", "--dest", dest] + flags, env=env)
            log.flush()
            log.seek(before)
            lines = log.read()
            log.seek(0, 2)
            methods = {}
            for m in re.findall(r'"(GET|PUT|HEAD|DELETE|POST) ', lines):
                methods[m] = methods.get(m, 0) + 1
            total = sum(methods.values())
            print(f"rollback of a {len(keys)}-file repair on moto ({'versioned' if versioned else 'unversioned'}): "
                  f"{total} requests {dict(sorted(methods.items()))}, {wall:.1f} s, {cpu:.2f} CPU-s")
    finally:
        moto.terminate()
        moto.wait()


def main():
    hours = int(os.environ.get("BENCH_HOURS", "200"))
    per_hour = int(os.environ.get("BENCH_OBJECTS_PER_HOUR", "2"))
    object_mb = float(os.environ.get("BENCH_OBJECT_MB", "9"))
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "-p", "rewind-cli"], cwd=ROOT, check=True)
    os.makedirs(OUT, exist_ok=True)
    dest, table = dataset(hours, per_hour, object_mb, bool(os.environ.get("BENCH_DELTA")))
    paths = files(dest)
    mb = sum(os.path.getsize(p) for p in paths) / 1e6
    print(f"dataset: {mb:.0f} MB of Parquet in {len(paths)} files")
    rng = random.Random(7)
    spread = rng.sample(ids_of(paths), 1000)
    clustered = rng.sample(ids_of(rng.sample(paths, 2)), 1000)
    repair_case("spread", dest, spread, mb, table)
    repair_case("clustered", dest, clustered, mb, table)
    if os.environ.get("BENCH_S3"):
        s3_rollback(min(hours, 200))


if __name__ == "__main__":
    main()
