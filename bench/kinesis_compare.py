#!/usr/bin/env python3
"""Kinesis replay throughput of `rewind run --sink kinesis` against a plain client (boto3
PutRecords, batches of 500) sending the same records to the same server, measured in the same
run (compare the ratios, not absolute figures).

    python3 bench/kinesis_compare.py            # BENCH_HOURS=2, BENCH_RUNS=3

The server is moto's Kinesis (pip "moto[kinesis]"), run single-threaded: moto's in-memory
Kinesis loses records under concurrent PutRecords calls (each record's sequence number is the
shard's highest plus one), so it serves one call at a time, and every run reads the stream
back to check that every record arrived. moto is slow and shares the 2 cores with the client,
so the wall figures say how much of the server's pace each client keeps, not what AWS would
take; the CPU per 1,000 records is each client's own cost (decode, route, checkpoint and the
SDK's signing and JSON for Rewind; JSON and signing for boto3). Needs a release build (built
when missing).
"""
import base64, json, os, shutil, subprocess, sys, tempfile, time

from benchlib import archived_events, child_cpu, free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "rewind")
ENV = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
           AWS_REGION="us-east-1", REWIND_LOG="warn")

SERVER = """
import sys
from werkzeug.serving import run_simple
from moto.server import DomainDispatcherApplication, create_backend_app
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=False)
"""


def main():
    import boto3
    hours = int(os.environ.get("BENCH_HOURS", "2"))
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    profile = os.environ.get("BENCH_PROFILE", "easy")
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "-p", "rewind-cli", "--bin", "rewind"],
                       cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="rewind-kinesis-bench-")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}"
        k = boto3.client("kinesis", endpoint_url=url, region_name="us-east-1",
                         aws_access_key_id="bench", aws_secret_access_key="bench")
        src = os.path.join(tmp, "archive")
        subprocess.run([BIN, "gen", "--out", src, "--org", "TN-b", "--start", "2024-06-01T00",
                        "--hours", str(hours), "--objects-per-hour", "4", "--object-mb", "1",
                        "--profile", profile, "--json"], check=True, stdout=subprocess.DEVNULL, env=ENV)
        # The plain client's records: the archived events' exact bytes (the objects are
        # uncompressed), keyed by event id as Rewind keys them.
        events = [(e, eid) for e, _, _, eid in archived_events(src)]
        n = len(events)
        print(f"{profile} profile: {n} events, {sum(len(e) for e, _ in events) / 1e6:.1f} MB, {runs} runs each")

        def read_back(stream):
            got = 0
            for s in k.list_shards(StreamName=stream)["Shards"]:
                it = k.get_shard_iterator(StreamName=stream, ShardId=s["ShardId"],
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
                while it:
                    r = k.get_records(ShardIterator=it, Limit=10000)
                    if not r["Records"]:
                        break
                    got += len(r["Records"])
                    it = r.get("NextShardIterator")
            return got

        def plain(stream):
            t0 = time.time()
            c0 = time.process_time()
            for i in range(0, n, 500):
                batch = [{"Data": e, "PartitionKey": key} for e, key in events[i:i + 500]]
                while batch:
                    r = k.put_records(StreamName=stream, Records=batch)
                    batch = [b for b, res in zip(batch, r["Records"]) if "ErrorCode" in res]
            return time.time() - t0, time.process_time() - c0

        def rewind(stream):
            dest = os.path.join(tmp, "out-" + stream)
            t0 = time.time()
            c0 = child_cpu()
            out = subprocess.run([BIN, "run", "--source", src, "--org", "TN-b",
                                  "--start", "2024-06-01T00",
                                  "--end", f"2024-06-01T{hours - 1:02d}", "--dest", dest,
                                  "--sink", "kinesis", "--kinesis-stream", stream,
                                  "--kinesis-endpoint-url", url, "--workers", "2", "--json"],
                                 capture_output=True, text=True, env=ENV)
            wall, cpu = time.time() - t0, child_cpu() - c0
            if out.returncode != 0:
                sys.exit(out.stderr)
            s = json.loads(out.stdout)
            assert s["acknowledged"] == n, s
            return wall, cpu

        rows = {"plain": [], "rewind": []}
        for r in range(runs):
            for name, fn in (("plain", plain), ("rewind", rewind)):
                stream = f"{name}-{r}"
                k.create_stream(StreamName=stream, ShardCount=4)
                k.get_waiter("stream_exists").wait(StreamName=stream,
                                                  WaiterConfig={"Delay": 0.2})
                wall, cpu = fn(stream)
                got = read_back(stream)
                assert got == n, f"{name}: {got} of {n} records in the stream"
                rows[name].append((wall, cpu))
                print(f"run {r} {name:6}: {n / wall:8.0f} records/s wall, "
                      f"{cpu * 1000 / n * 1000:6.1f} ms CPU per 1,000 records")
        best = {name: min(v, key=lambda x: x[0]) for name, v in rows.items()}
        ratio = best["plain"][0] / best["rewind"][0]
        print(f"\nbest wall: Rewind {n / best['rewind'][0]:.0f} records/s, plain boto3 "
              f"{n / best['plain'][0]:.0f} records/s: Rewind keeps {ratio:.2f} of the plain "
              f"client's pace")
        print(f"client CPU per 1,000 records: Rewind {min(c for _, c in rows['rewind']) / n * 1e6:.1f} ms "
              f"(decode, route, put), boto3 {min(c for _, c in rows['plain']) / n * 1e6:.1f} ms (put only)")
    finally:
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
