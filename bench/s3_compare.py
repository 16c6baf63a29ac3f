#!/usr/bin/env python3
"""Read throughput of `rewind run` from a local S3 server against the same files in a local
directory, measured in the same run (compare the ratio, not absolute figures).

    python3 bench/s3_compare.py              # both cases below
    BENCH_CASE=large python3 bench/s3_compare.py
    BENCH_CASE=small python3 bench/s3_compare.py

- large: 4 hours x 12 objects x 5 MB (~250 MB), Parquet written locally in both runs, so the
  difference is the source.
- small: 10,000 objects of 50 KB in one day (24 hours x 417), where concurrent GETs per shard
  (--s3-read-ahead) have to keep the CPU busy.

The S3 server is s3s-fs (installed by scripts/test.sh) serving a directory on tmpfs; the
archive is generated straight into its bucket directory, so the local and the S3 run read the
same bytes. s3s-fs lists no ETags, so planning sends one HEAD per object to pin it.
`BENCH_SERVER=moto` serves the same files from moto instead (uploaded first; its listings carry
ETags like AWS's, so no HEAD is sent) — moto is slow, so its wall times mean nothing, but
Rewind's CPU per object is what real S3 would cost. The servers run on the same 2 cores as
Rewind; the figures are Rewind's own CPU (the server's is printed beside it). Besides MB per
CPU-second, each case prints Rewind's extra CPU per object read from S3 (S3 run minus local
run, divided by the objects). Needs a release build (built when missing).

    BENCH_SERVER=moto BENCH_CASE=small python3 bench/s3_compare.py

`BENCH_SERVER=stand-in` serves them from `bench/list_server.py` (a Python stand-in: listings
with ETags from a sorted key set, pinned GETs with If-Match and Range, HTTP/1.1 keep-alive):
no HEADs and no new connection per request, which is what Rewind's side costs against AWS S3.
"""
import json, os, shutil, socket, subprocess, sys, tempfile, time

from benchlib import free_port, measured, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "rewind")
KEY, SECRET = "benchkey", "benchsecret0123456789"


def child(args, env=None):
    """(cpu seconds of the child, wall seconds, summary json)."""
    cpu, wall, _, out = measured(args, env)
    return cpu, wall, json.loads(out)


def server_cpu(pid):
    """CPU seconds the S3 server has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def upload(bucket_dir, port):
    """Copies the generated archive into moto's bucket `archive` (moto keeps objects in memory)."""
    import boto3
    from concurrent.futures import ThreadPoolExecutor
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=KEY,
                      aws_secret_access_key=SECRET, region_name="us-east-1")
    try:
        s3.create_bucket(Bucket="archive")
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    files = [os.path.join(d, f) for d, _, fs in os.walk(bucket_dir) for f in fs]

    def put(path):
        with open(path, "rb") as f:
            s3.put_object(Bucket="archive", Key=os.path.relpath(path, bucket_dir), Body=f.read())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files))


def run_case(name, hours, per_hour, object_mb, base, port, server_pid, repeats=3, moto=False,
             standin=False):
    bucket_dir = os.path.join(base, "data", "archive")
    shutil.rmtree(bucket_dir, ignore_errors=True)
    subprocess.run([BIN, "gen", "--out", bucket_dir, "--org", "TN-bench", "--start", "2024-04-01T00",
                    "--hours", str(hours), "--objects-per-hour", str(per_hour), "--object-mb", str(object_mb),
                    "--seed", "11"], check=True, stdout=subprocess.DEVNULL)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(bucket_dir) for f in fs)
    objects = sum(len(fs) for _, _, fs in os.walk(bucket_dir))
    if moto:
        upload(bucket_dir, port)
    if standin:
        # The stand-in reads its key set at start: start it now that the archive is written.
        server = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "list_server.py"),
                                   "--port", str(port), os.path.join(base, "data")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, limit=120)
        server_pid = server.pid
    end = f"2024-04-01T{hours - 1:02d}"
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true")
    common = ["--org", "TN-bench", "--start", "2024-04-01T00", "--end", end, "--json", "--workers", "2"]
    best = {}
    for _ in range(repeats):
        for kind, src in [("local", bucket_dir), ("s3", "s3://archive")]:
            dest = os.path.join(base, "dest")
            shutil.rmtree(dest, ignore_errors=True)
            extra = ["--endpoint-url", f"http://127.0.0.1:{port}", "--force-path-style"] if kind == "s3" else []
            before = server_cpu(server_pid)
            cpu, wall, summary = child([BIN, "run", "--source", src, "--dest", dest] + common + extra, env)
            served = server_cpu(server_pid) - before
            assert summary["state"] == "succeeded", summary
            # The run with the least CPU (wall times of a slow test server mean little).
            if kind not in best or cpu < best[kind][0]:
                best[kind] = (cpu, wall, summary["recovered"], served)
    if standin:
        server.terminate()
        server.wait()
    (lc, lw, lr, _), (sc, sw, sr, ss) = best["local"], best["s3"]
    assert lr == sr, f"different event counts: {lr} vs {sr}"
    mb = size / 1e6
    print(f"{name}: {objects} objects, {mb:.0f} MB, {lr} events (best of {repeats})")
    print(f"  local dir : {mb / lw:7.1f} MB/s wall, {lc:5.2f} CPU-s, {mb / lc:6.1f} MB/CPU-s")
    print(f"  s3        : {mb / sw:7.1f} MB/s wall, {sc:5.2f} CPU-s, {mb / sc:6.1f} MB/CPU-s (Rewind);"
          f" the server used {ss:.2f} CPU-s of the same 2 cores")
    print(f"  s3 / local: wall throughput {lw / sw:.2f}, Rewind CPU efficiency {lc / sc:.2f}")
    print(f"  Rewind's extra CPU per object read from S3: {(sc - lc) / objects * 1e3:.3f} ms")
    return lw / sw


def main():
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "-p", "rewind-cli"], cwd=ROOT, check=True)
    if os.environ.get("BENCH_SERVER", "s3s") == "s3s" and not shutil.which("s3s-fs"):
        sys.exit("s3s-fs is missing: run scripts/test.sh (it installs it)")
    base = tempfile.mkdtemp(prefix="rewind-s3bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.makedirs(os.path.join(base, "data"))
    port = free_port()
    moto = os.environ.get("BENCH_SERVER", "s3s") == "moto"
    standin = os.environ.get("BENCH_SERVER", "s3s") == "stand-in"
    server = None
    if standin:
        pass  # started per case, once its archive is written
    elif moto:
        server = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        server = subprocess.Popen(["s3s-fs", "--host", "127.0.0.1", "--port", str(port), "--access-key", KEY,
                                   "--secret-key", SECRET, os.path.join(base, "data")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(0 if standin else 100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        case = os.environ.get("BENCH_CASE", "both")
        if case in ("both", "large"):
            run_case("large objects", 4, 12, 5, base, port, server and server.pid, moto=moto,
                     standin=standin)
        if case in ("both", "small"):
            run_case("many small objects", 24, 417, 0.05, base, port, server and server.pid,
                     repeats=2, moto=moto, standin=standin)
    finally:
        if server:
            server.terminate()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
