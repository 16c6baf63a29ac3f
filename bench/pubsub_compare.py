#!/usr/bin/env python3
"""Pub/Sub replay throughput of `rewind run --sink pubsub` against a plain client (REST publish
of 1,000 messages per call with the same data and the same lineage attributes) sending the same
events to the same server, measured in the same run (compare the ratios, not absolute figures).

    python3 bench/pubsub_compare.py            # BENCH_HOURS=2, BENCH_RUNS=3

The server is Google's Pub/Sub emulator (Java, from the Google Cloud CLI; set
REWIND_PUBSUB_EMULATOR to its `cloud-pubsub-emulator` script if it is not in the usual place).
It is not installable from the registries our machines reach, so this benchmark runs only where
it is installed. Each run creates a topic with a subscription and pulls it back to check that
every message arrived. The emulator shares the 2 cores with the clients, so the wall figures say
how much of its pace each client keeps; the CPU per 1,000 messages is each client's own cost.
Needs a release build (built when missing).
"""
import base64, json, os, shutil, subprocess, sys, tempfile, time
import urllib.request

from benchlib import archived_events, child_cpu, free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "rewind")
EMULATOR = os.environ.get(
    "REWIND_PUBSUB_EMULATOR",
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")


def main():
    if not os.path.exists(EMULATOR):
        sys.exit(f"no Pub/Sub emulator at {EMULATOR} (set REWIND_PUBSUB_EMULATOR)")
    hours = int(os.environ.get("BENCH_HOURS", "2"))
    runs = int(os.environ.get("BENCH_RUNS", "3"))
    profile = os.environ.get("BENCH_PROFILE", "easy")
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "-p", "rewind-cli", "--bin", "rewind"],
                       cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="rewind-pubsub-bench-")
    port = free_port()
    server = subprocess.Popen([EMULATOR, "--host=127.0.0.1", f"--port={port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1/"
    env = dict(os.environ, PUBSUB_EMULATOR_HOST=f"127.0.0.1:{port}", REWIND_LOG="warn")

    def call(method, path, body=None):
        req = urllib.request.Request(base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("content-type", "application/json")
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read() or b"{}")

    try:
        wait_port(port, 60)
        src = os.path.join(tmp, "archive")
        subprocess.run([BIN, "gen", "--out", src, "--org", "TN-b", "--start", "2024-06-01T00",
                        "--hours", str(hours), "--objects-per-hour", "4", "--object-mb", "1",
                        "--profile", profile, "--json"], check=True, stdout=subprocess.DEVNULL, env=env)
        events = archived_events(src)
        n = len(events)
        print(f"{profile} profile: {n} events, {sum(len(e[0]) for e in events) / 1e6:.1f} MB, {runs} runs each")

        def topic(name):
            call("PUT", f"projects/bench-project/topics/{name}")
            call("PUT", f"projects/bench-project/subscriptions/{name}-sub",
                 {"topic": f"projects/bench-project/topics/{name}"})
            return f"projects/bench-project/topics/{name}"

        def pulled(name):
            got, empty = 0, 0
            while empty < 2:
                r = call("POST", f"projects/bench-project/subscriptions/{name}-sub:pull",
                         {"maxMessages": 1000, "returnImmediately": True})
                msgs = r.get("receivedMessages", [])
                if not msgs:
                    empty += 1
                    continue
                empty = 0
                got += len(msgs)
                call("POST", f"projects/bench-project/subscriptions/{name}-sub:acknowledge",
                     {"ackIds": [m["ackId"] for m in msgs]})
            return got

        def plain(name):
            t = topic(name)
            t0, c0 = time.time(), time.process_time()
            for i in range(0, n, 1000):
                msgs = [{"data": base64.b64encode(e).decode(),
                         "attributes": {"rewind-job": "bench", "rewind-source-key": key,
                                        "rewind-offset": str(off), "rewind-event-id": eid}}
                        for e, key, off, eid in events[i:i + 1000]]
                call("POST", f"{t}:publish", {"messages": msgs})
            return time.time() - t0, time.process_time() - c0

        def rewind(name):
            t = topic(name)
            dest = os.path.join(tmp, "out-" + name)
            t0, c0 = time.time(), child_cpu()
            out = subprocess.run([BIN, "run", "--source", src, "--org", "TN-b",
                                  "--start", "2024-06-01T00",
                                  "--end", f"2024-06-01T{hours - 1:02d}", "--dest", dest,
                                  "--sink", "pubsub", "--topic", t, "--workers", "2", "--json"],
                                 capture_output=True, text=True, env=env)
            wall, cpu = time.time() - t0, child_cpu() - c0
            if out.returncode != 0:
                sys.exit(out.stderr)
            assert json.loads(out.stdout)["acknowledged"] == n
            return wall, cpu

        rows = {"plain": [], "rewind": []}
        for r in range(runs):
            for name, fn in (("plain", plain), ("rewind", rewind)):
                wall, cpu = fn(f"{name}-{r}")
                got = pulled(f"{name}-{r}")
                assert got >= n, f"{name}: {got} of {n} messages"
                rows[name].append((wall, cpu))
                print(f"run {r} {name:6}: {n / wall:8.0f} messages/s wall, "
                      f"{cpu / n * 1e6:6.1f} ms CPU per 1,000 messages")
        best = {k: min(v) for k, v in rows.items()}
        print(f"\nbest wall: Rewind {n / best['rewind'][0]:.0f} messages/s, plain client "
              f"{n / best['plain'][0]:.0f} messages/s: Rewind keeps "
              f"{best['plain'][0] / best['rewind'][0]:.2f} of the plain client's pace")
        print(f"client CPU per 1,000 messages: Rewind {min(c for _, c in rows['rewind']) / n * 1e6:.1f} ms, "
              f"plain {min(c for _, c in rows['plain']) / n * 1e6:.1f} ms")
    finally:
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
