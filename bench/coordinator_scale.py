#!/usr/bin/env python3
"""The coordinator with many unfinished jobs (issue 20): its memory, its CPU and etcd's, and the
etcd requests it sends per second while it drives them, with no workers (nothing moves, so
this is the standing cost of keeping jobs in flight).

    python3 bench/coordinator_scale.py                       # 1,000 jobs of 30 days, 100 tenants
    BENCH_JOBS=1000 BENCH_DAYS=365 BENCH_TENANTS=1000 python3 bench/coordinator_scale.py

Starts a real etcd (needs `etcd` on the PATH) and `rewind coordinator` (release build, built
when missing, or $REWIND_BIN) on free loopback ports; submits the jobs with `rewind submit`
(an empty archive: every hour is listed and found empty, so shards are real and cost nothing to
plan); then idles for BENCH_SECONDS (default 30) and reports, for the coordinator and etcd:
CPU seconds per second, RSS (now and peak), etcd requests per second (the coordinator's
`rewind_etcd_requests` counter), and etcd's database size.
"""
import concurrent.futures, os, re, shutil, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, process_cpu, start_etcd, stop_all, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("REWIND_BIN", os.path.join(ROOT, "target", "release", "rewind"))


def mem(pid):
    """(RSS, peak RSS) in MB."""
    status = open(f"/proc/{pid}/status").read()
    kb = lambda k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) / 1024
    return kb("VmRSS"), kb("VmHWM")


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[-1])
    return 0.0


def main():
    jobs = int(os.environ.get("BENCH_JOBS", "1000"))
    days = int(os.environ.get("BENCH_DAYS", "30"))
    tenants = int(os.environ.get("BENCH_TENANTS", "100"))
    seconds = float(os.environ.get("BENCH_SECONDS", "30"))
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "-p", "rewind-cli"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="rewind-coord-scale-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    procs = []
    try:
        etcd, cport = start_etcd(os.path.join(tmp, "etcd"))
        procs.append(etcd)
        api, mport = free_port(), free_port()
        coord = subprocess.Popen(
            [BIN, "coordinator", "--listen", f"127.0.0.1:{api}", "--etcd", f"127.0.0.1:{cport}",
             "--metrics-listen", f"127.0.0.1:{mport}"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "coordinator.log"), "w"),
            env=dict(os.environ, RUST_LOG="warn"))
        procs.append(coord)
        wait_port(api)
        wait_port(mport)
        src = os.path.join(tmp, "archive")
        os.makedirs(src)
        rss0 = mem(coord.pid)[0]
        end = f"2024-01-{days:02d}T23" if days <= 31 else None
        if end is None:
            # A range of `days` from 2024-01-01 (2024 is a leap year: 366 days fit).
            import datetime
            end = (datetime.date(2024, 1, 1) + datetime.timedelta(days=days - 1)).isoformat() + "T23"

        def submit(i):
            out = subprocess.run(
                [BIN, "submit", "--coordinator", f"http://127.0.0.1:{api}", "--source", src,
                 "--org", f"TN-t{i % tenants}", "--start", "2024-01-01T00", "--end", end,
                 "--dest", os.path.join(tmp, "out"), "--priority", "backfill"],
                capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"submit {i}: {out.stderr}")

        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(submit, range(jobs)))
        took = time.time() - t0
        print(f"{jobs} jobs of {days} days ({jobs * days * 24:,} shards) for {tenants} tenants "
              f"submitted in {took:.1f}s")
        time.sleep(2)
        # A scrape re-reads every job's progress (the job gauges): measure one, take it out.
        ra = metric(mport, "rewind_etcd_requests")
        r0 = metric(mport, "rewind_etcd_requests")
        scrape = r0 - ra
        c0, e0, t0 = process_cpu(coord.pid), process_cpu(etcd.pid), time.time()
        time.sleep(seconds)
        dt = time.time() - t0
        c1, e1 = process_cpu(coord.pid), process_cpu(etcd.pid)
        r1 = metric(mport, "rewind_etcd_requests") - scrape
        rss, peak = mem(coord.pid)
        erss, _ = mem(etcd.pid)
        db = sum(os.path.getsize(os.path.join(d, f))
                 for d, _, fs in os.walk(os.path.join(tmp, "etcd")) for f in fs if f == "db")
        print(f"idle {dt:.0f}s with {jobs} jobs in flight, no workers:")
        print(f"  coordinator: {(c1 - c0) / dt:.2f} CPU-s/s, RSS {rss:.0f} MB (peak {peak:.0f}, "
              f"{rss0:.0f} before the jobs), {(r1 - r0) / dt:,.0f} etcd requests/s")
        print(f"  etcd: {(e1 - e0) / dt:.2f} CPU-s/s, RSS {erss:.0f} MB, db {db / 1e6:.1f} MB")
        print(f"  (one scrape of the coordinator's /metrics: {scrape:,.0f} etcd requests)")
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
