#!/usr/bin/env python3
"""The chaos load test of Rewind's distributed mode, in containers (run by ../loadtest.sh).

Starts the fleet of compose.yml (3 etcd members, 2 coordinators, N workers, s3s-fs, tansu),
writes archives of several tenants into the S3 server, submits a mix of jobs (Parquet
recoveries at three priorities, an at-least-once and an exactly-once Kafka replay, then a keyed
repair), and while they run kills, pauses and restarts random containers: workers, the leading
coordinator, etcd members (the etcd leader among them). Then it checks every job against the
archive, read independently of Rewind (each event once in Parquet and, read_committed, in
Kafka; for exactly-once, the records the job's committed markers cover, since tansu also shows
aborted transactions' records) and prints one JSON summary: jobs, events, throughput, faults
injected and survived, time to recover per fault kind, events lost or duplicated.

Exit status 1 when anything was lost, or duplicated where exactly-once is promised, or a job did
not succeed.
"""
import argparse, base64, collections, datetime, json, os, random, re, subprocess, sys, threading, time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
# The archive reader the benchmarks use (independent of Rewind).
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "bench"))
import benchlib  # noqa: E402
PROJECT = "rewind-lt"
PREFIX = "/rewind/v1/"
START = "2024-04-01T00"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Fleet:
    def __init__(self, a):
        self.a = a
        base = a.port_base
        self.ports = {
            "LT_ETCD1": base + 1, "LT_ETCD2": base + 2, "LT_ETCD3": base + 3,
            "LT_ETCD1_PEER": base + 11, "LT_ETCD2_PEER": base + 12, "LT_ETCD3_PEER": base + 13,
            "LT_COORD1": base + 21, "LT_COORD2": base + 22,
            "LT_COORD1_METRICS": base + 31, "LT_COORD2_METRICS": base + 32,
            "LT_S3": base + 41, "LT_KAFKA": base + 51,
        }
        self.env = dict(os.environ, LT_DIR=a.dir, LT_SLOTS=str(a.slots),
                        **{k: str(v) for k, v in self.ports.items()})
        self.env.update(AWS_ACCESS_KEY_ID="rewind", AWS_SECRET_ACCESS_KEY="rewind-load-test",
                        AWS_REGION="us-east-1")
        self.s3 = f"http://127.0.0.1:{self.ports['LT_S3']}"
        self.kafka = f"127.0.0.1:{self.ports['LT_KAFKA']}"
        self.coordinators = {
            "coordinator1": f"http://127.0.0.1:{self.ports['LT_COORD1']}",
            "coordinator2": f"http://127.0.0.1:{self.ports['LT_COORD2']}",
        }
        self.etcd = {f"etcd{i}": f"http://127.0.0.1:{self.ports[f'LT_ETCD{i}']}" for i in (1, 2, 3)}

    # --- docker ---------------------------------------------------------------------------
    def compose(self, *args, check=True):
        cmd = ["docker-compose", "-p", PROJECT, "-f", os.path.join(HERE, "compose.yml"), *args]
        return subprocess.run(cmd, env=self.env, check=check, capture_output=True, text=True)

    def containers(self, service):
        out = self.compose("ps", "-q", service).stdout.split()
        return out

    def docker(self, *args):
        return subprocess.run(["docker", *args], capture_output=True, text=True)

    # --- rewind CLI on the host -------------------------------------------------------------
    def rewind(self, *args, check=True):
        r = subprocess.run([self.a.rewind, *args], env=self.env, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"rewind {' '.join(args)}: {r.stderr.strip()[-2000:]}")
        return r

    def s3_args(self):
        return ["--endpoint-url", self.s3, "--force-path-style"]

    def api(self, *args):
        """A coordinator API call, on whichever replica answers (either may be down)."""
        last = None
        for _ in range(60):
            for addr in self.coordinators.values():
                r = self.rewind(*args, "--coordinator", addr, check=False)
                if r.returncode == 0:
                    return r.stdout
                last = r.stderr.strip()[-500:]
            time.sleep(1)
        raise RuntimeError(f"no coordinator answered {args}: {last}")

    # --- etcd through its JSON gateway ------------------------------------------------------
    def etcd_call(self, path, body):
        for addr in random.sample(list(self.etcd.values()), 3):
            try:
                req = urllib.request.Request(addr + path, data=json.dumps(body).encode(),
                                             headers={"content-type": "application/json"})
                return json.load(urllib.request.urlopen(req, timeout=2))
            except Exception:
                continue
        return None

    def etcd_range(self, prefix, keys_only=False):
        b = prefix.encode()
        end = b[:-1] + bytes([b[-1] + 1])
        r = self.etcd_call("/v3/kv/range", {"key": base64.b64encode(b).decode(),
                                            "range_end": base64.b64encode(end).decode(),
                                            "keys_only": keys_only})
        if r is None:
            return None
        return [(base64.b64decode(kv["key"]).decode(),
                 base64.b64decode(kv.get("value", "")).decode(errors="replace"),
                 kv.get("lease", "0"))
                for kv in r.get("kvs", [])]

    def leader_coordinator(self):
        kv = self.etcd_range(PREFIX + "leader")
        return kv[0][1] if kv else None

    def etcd_leader(self):
        """(service of the etcd leader, services of the followers), from the members' status."""
        members = self.etcd_call("/v3/cluster/member/list", {}) or {}
        names = {m["ID"]: "etcd" + m["name"][1:] for m in members.get("members", [])}
        for addr in self.etcd.values():
            try:
                req = urllib.request.Request(addr + "/v3/maintenance/status", data=b"{}")
                st = json.load(urllib.request.urlopen(req, timeout=2))
                leader = names.get(st["leader"])
                if leader:
                    return leader, [n for n in self.etcd if n != leader]
            except Exception:
                continue
        return None, list(self.etcd)

    def done_keys(self):
        kv = self.etcd_range(PREFIX + "jobs/", keys_only=True)
        return None if kv is None else {k for k, _, _ in kv if "/done/" in k}

    def claims(self):
        """Claim key -> (value "<worker id>/<slot>", lease id)."""
        kv = self.etcd_range(PREFIX + "jobs/")
        return None if kv is None else {k: (v, lease) for k, v, lease in kv if "/claim/" in k}


# --- the archive, read independently of Rewind ---------------------------------------------
def archived_ids(root):
    """Every event's event_id below `root` (objects of concatenated JSON, plain or gzip)."""
    return collections.Counter(e[3] for e in benchlib.archived_events(root))


def parquet_ids(root):
    """event_id of every row of the Parquet files below `root` that a reader sees (names
    starting with _ or . are not data), and the files' count."""
    import pyarrow.parquet as pq
    ids = collections.Counter()
    files = 0
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
        for f in names:
            if f.startswith(("_", ".")) or not f.endswith(".parquet"):
                continue
            files += 1
            for v in pq.read_table(os.path.join(dirpath, f), columns=["event_id"]).column(0):
                ids[str(v.as_py())] += 1
    return ids, files


def kafka_records(brokers, topic):
    """Every record of `topic` a read_committed consumer sees: (value, headers)."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"lt-check-{time.time()}",
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    meta = c.list_topics(topic, timeout=20)
    parts = list(meta.topics[topic].partitions)
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=20)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out = []
    pos = {p: 0 for p in parts}
    deadline = time.time() + 300
    while any(pos[p] < ends[p] for p in parts) and time.time() < deadline:
        for m in c.consume(1000, timeout=1):
            if m.error():
                continue
            pos[m.partition()] = m.offset() + 1
            out.append((m.value(), dict((k, v) for k, v in (m.headers() or []))))
    c.close()
    return out


def kafka_ids(brokers, topic):
    return collections.Counter(str(json.loads(v)["event_id"]) for v, _ in
                               kafka_records(brokers, topic))


SHARD_DIR = re.compile(r"/(\d{4})/(\d{2})/(\d{2})/(\d{2})/")


def committed_ids(brokers, topic, job):
    """event_id of the records an exactly-once job committed, as its markers tell.

    tansu shows the records of aborted transactions to read_committed consumers (a Kafka broker
    hides them), so a killed attempt's open transaction shows up as duplicates there. Each
    record carries its attempt (`rewind-attempt`) and position (`rewind-source-key`,
    `rewind-offset`); each committed transaction's marker in `<topic>.rewind-control` says how
    far its attempt reached (object key and offset, or done). A record counts when its attempt's
    furthest marker is past it: what a broker that hides aborted transactions would deliver.
    Also returns how many records were left out as aborted."""
    reach = {}
    for value, _ in kafka_records(brokers, topic + ".rewind-control"):
        try:
            m = json.loads(value)
        except ValueError:
            continue
        if m.get("job") != job:
            continue
        at = (m["shard"], int(m["attempt"]))
        here = (chr(0x10FFFF),) if m.get("done", True) else (m["object_key"], int(m["offset"]))
        if at not in reach or here > reach[at]:
            reach[at] = here
    ids, aborted = collections.Counter(), 0
    for value, h in kafka_records(brokers, topic):
        key = h["rewind-source-key"].decode()
        d = SHARD_DIR.search("/" + key)
        shard = "".join(d.groups()) if d else ""
        mark = reach.get((shard, int(h["rewind-attempt"])))
        if mark is not None and (key, int(h["rewind-offset"])) < mark:
            ids[str(json.loads(value)["event_id"])] += 1
        else:
            aborted += 1
    return ids, aborted


def compare(expected, got):
    lost = sum((expected - got).values())
    extra = sum((got - expected).values())
    return lost, extra


# --- chaos ---------------------------------------------------------------------------------
class Chaos(threading.Thread):
    KINDS = ["worker-kill", "worker-pause", "coordinator-leader-kill", "etcd-leader-kill",
             "etcd-follower-kill", "etcd-member-pause"]

    def __init__(self, fleet, every, seed):
        super().__init__(daemon=True)
        self.f = fleet
        self.every = every
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.injected = collections.Counter()
        self.recovered = collections.defaultdict(list)
        self.unrecovered = collections.Counter()
        self.events = []

    def run(self):
        order = []
        while not self.stop.wait(self.rng.uniform(0.5, 1.5) * self.every):
            if not order:
                order = self.KINDS[:]
                self.rng.shuffle(order)
            kind = order.pop()
            try:
                self.inject(kind)
            except Exception as e:  # a fault that could not be injected is reported, not fatal
                log(f"chaos: {kind} not injected: {e}")

    def wait_for(self, cond, limit=120):
        t0 = time.time()
        while time.time() - t0 < limit:
            if cond():
                return time.time() - t0
            time.sleep(0.2)
        return None

    def note(self, kind, detail, took):
        self.injected[kind] += 1
        if took is None:
            self.unrecovered[kind] += 1
        else:
            self.recovered[kind].append(took)
        self.events.append({"at": time.strftime("%H:%M:%S"), "fault": kind, "target": detail,
                            "recovered_s": None if took is None else round(took, 2)})
        log(f"chaos: {kind} {detail}: " + ("no recovery seen" if took is None else
                                            f"recovered in {took:.1f} s"))

    def inject(self, kind):
        f, rng = self.f, self.rng
        if kind.startswith("worker"):
            cids = f.containers("worker")
            if not cids:
                return
            cid = rng.choice(cids)
            me = "w-" + cid[:12]
            # A claim's value is "<worker id>/<slot>".
            held = {k: lease for k, (v, lease) in (f.claims() or {}).items()
                    if v.split("/")[0] == me}
            t0 = time.time()
            if kind == "worker-kill":
                f.docker("kill", cid)
            else:
                f.docker("pause", cid)

            def reclaimed():
                # Each shard it held is claimed again under another lease (another worker's, or
                # its own after a restart), done, or its job is over.
                kv = f.etcd_range(PREFIX + "jobs/")
                if kv is None:
                    return False
                now = {k: lease for k, _, lease in kv}
                for k, lease in held.items():
                    job = k.split("/claim/")[0] + "/"
                    done = k.replace("/claim/", "/done/") in now
                    gone = not any(key.startswith(job) for key in now)
                    if now.get(k, lease) == lease and not done and not gone:
                        return False
                return True
            try:
                took = self.wait_for(reclaimed) if held else None
            finally:
                if kind == "worker-kill":
                    time.sleep(max(0.0, 3 - (time.time() - t0)))
                    f.docker("start", cid)
                else:
                    time.sleep(max(0.0, 15 - (time.time() - t0)))  # beyond the 10 s lease
                    f.docker("unpause", cid)
            if held:
                self.note(kind, f"{me} holding {len(held)} shards", took)
            else:
                self.injected[kind] += 1
                self.events.append({"at": time.strftime("%H:%M:%S"), "fault": kind,
                                    "target": f"{me} (idle)", "recovered_s": None})
                log(f"chaos: {kind} {me} (held no shard)")
        elif kind == "coordinator-leader-kill":
            leader = f.leader_coordinator()
            if leader not in f.coordinators:
                return
            f.compose("kill", leader)
            try:
                took = self.wait_for(lambda: f.leader_coordinator() not in (None, leader))
            finally:
                f.compose("start", leader)
            self.note(kind, leader, took)
        else:
            leader, followers = f.etcd_leader()
            target = leader if kind == "etcd-leader-kill" else rng.choice(followers)
            if target is None:
                return
            before = f.done_keys() or set()
            if kind == "etcd-member-pause":
                cid = f.containers(target)[0]
                f.docker("pause", cid)
            else:
                f.compose("kill", target)
            try:
                took = self.wait_for(lambda: bool((f.done_keys() or set()) - before))
                time.sleep(2)
            finally:
                if kind == "etcd-member-pause":
                    f.docker("unpause", cid)
                else:
                    f.compose("start", target)
            self.note(kind, target, took)


# --- the run -------------------------------------------------------------------------------
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rewind", required=True, help="the rewind binary on the host")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--hours", type=int, default=96,
                   help="hours of archive per tenant (one shard each)")
    p.add_argument("--objects-per-hour", type=int, default=2)
    p.add_argument("--object-mb", type=float, default=1.0)
    p.add_argument("--chaos-every", type=float, default=10.0,
                   help="mean seconds between faults (0: no chaos)")
    p.add_argument("--replay-events-per-sec", type=int, default=2000,
                   help="throttle of each Kafka replay, so that faults land in its middle "
                        "(0: none)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--port-base", type=int, default=27000)
    p.add_argument("--dir", default="/tmp/rewind-loadtest")
    p.add_argument("--keep", action="store_true", help="leave the fleet running")
    p.add_argument("--no-check", action="store_true",
                   help="skip checking the outputs (throughput runs: the checker reads ~3 MB/s)")
    a = p.parse_args()
    a.rewind = os.path.abspath(a.rewind)
    f = Fleet(a)

    f.compose("down", "-v", "--remove-orphans", check=False)
    subprocess.run(["rm", "-rf", a.dir], check=True)
    for b in ("archive", "recovered", "replays"):
        os.makedirs(os.path.join(a.dir, "s3", b))
    os.makedirs(os.path.join(a.dir, "shared"))
    log(f"starting the fleet: 3 etcd, 2 coordinators, {a.workers} workers, s3s-fs, tansu")
    f.compose("up", "-d", "--scale", f"worker={a.workers}")
    try:
        return run(f, a)
    finally:
        if not a.keep:
            logs = os.path.join(a.dir, "compose.log")
            with open(logs, "w") as out:
                out.write(f.compose("logs", "--no-color", check=False).stdout)
            f.compose("down", "-v", "--remove-orphans", check=False)
            log(f"containers' logs in {logs}")


def run(f, a):
    t_ready = time.time()
    for _ in range(120):
        if all(f.rewind("jobs", "--coordinator", c, "--json", check=False).returncode == 0
               for c in f.coordinators.values()):
            break
        time.sleep(0.5)
    else:
        sys.exit("the coordinators did not come up (docker-compose logs coordinator1)")
    tansu = os.path.join(os.path.dirname(a.rewind), "tansu")
    for topic, parts in (("lt-alo", 6), ("lt-eo", 6), ("lt-eo.rewind-control", 1)):
        subprocess.run([tansu, "topic", "create", "--broker", f"tcp://{f.kafka}", "--partitions",
                        str(parts), topic], check=True, capture_output=True)
    log(f"fleet ready in {time.time() - t_ready:.1f} s")

    tenants = {"TN-alpha": "backfill", "TN-bravo": "interactive", "TN-charlie": "normal",
               "TN-delta": "normal", "TN-echo": "normal"}
    end = (datetime.datetime.strptime(START, "%Y-%m-%dT%H")
           + datetime.timedelta(hours=a.hours - 1)).strftime("%Y-%m-%dT%H")
    t0 = time.time()
    for i, org in enumerate(tenants):
        f.rewind("gen", "--out", f"s3://archive/{org}", *f.s3_args(), "--org", org,
                 "--start", START, "--hours", str(a.hours), "--objects-per-hour",
                 str(a.objects_per_hour), "--object-mb", str(a.object_mb), "--seed", str(i + 1))
    log(f"archives of {len(tenants)} tenants written in {time.time() - t0:.1f} s")

    common = ["--start", START, "--end", end, *f.s3_args(), "--json"]
    jobs = {}
    t_submit = time.time()
    # TN-bravo's dataset, repaired later, goes to the shared directory: s3s-fs cannot hold the
    # repair's staging keys (it names a file after the base64 of bucket and key, > 255 bytes).
    dests = {org: f"s3://recovered/{org}" for org in tenants}
    dests["TN-bravo"] = os.path.join(a.dir, "shared", "TN-bravo")
    for org in ("TN-alpha", "TN-bravo", "TN-charlie"):
        out = f.api("submit", "--source", f"s3://archive/{org}", "--org", org,
                    "--dest", dests[org], "--priority", tenants[org], *common)
        jobs[org] = {"id": json.loads(out)["job_id"], "kind": "parquet"}
    throttle = ["--max-events-per-sec", str(a.replay_events_per_sec)] \
        if a.replay_events_per_sec else []
    for org, topic, delivery in (("TN-delta", "lt-alo", "at-least-once"),
                                 ("TN-echo", "lt-eo", "exactly-once")):
        out = f.api("submit", "--source", f"s3://archive/{org}", "--org", org,
                    "--dest", f"s3://replays/{org}", "--sink", "kafka", "--brokers", f.kafka,
                    "--topic", topic, "--delivery", delivery, *common, *throttle)
        jobs[org] = {"id": json.loads(out)["job_id"], "kind": delivery, "topic": topic}
    log("submitted: " + ", ".join(f"{o} {j['kind']} {j['id']}" for o, j in jobs.items()))

    chaos = Chaos(f, a.chaos_every, a.seed) if a.chaos_every > 0 else None
    if chaos:
        chaos.start()
    # A keyed repair of the first recovered tenant while the chaos goes on: every 50th event
    # deleted.
    states = wait_jobs(f, {"TN-bravo": jobs["TN-bravo"]})
    repaired = archived_ids(os.path.join(a.dir, "s3", "archive", "TN-bravo"))
    delete = sorted(repaired)[::50]
    keys = os.path.join(a.dir, "delete-keys.txt")
    with open(keys, "w") as out:
        out.write("".join(k + "\n" for k in delete))
    if states["TN-bravo"] == "succeeded":
        jobs["TN-bravo repair"] = {"id": repair(f, dests["TN-bravo"], keys), "kind": "repair"}
    states.update(wait_jobs(f, {o: j for o, j in jobs.items() if o != "TN-bravo"}))
    elapsed = time.time() - t_submit
    if chaos:
        chaos.stop.set()
        chaos.join()

    # --- check every job against the archive ---
    results, ok, events, in_bytes = {}, True, 0, 0
    for org, job in jobs.items():
        if job["kind"] == "repair":
            continue
        src = os.path.join(a.dir, "s3", "archive", org)
        in_bytes += sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(src)
                        for n in ns if not n.startswith("."))
        if a.no_check:
            results[org] = {"job": job["id"], "kind": job["kind"], "state": states[org]}
            ok &= states[org] == "succeeded"
            continue
        expected = archived_ids(src)
        events += sum(expected.values())
        r = {"job": job["id"], "kind": job["kind"], "state": states[org],
             "events": sum(expected.values())}
        if job["kind"] == "parquet":
            if org == "TN-bravo" and "TN-bravo repair" in jobs:
                for k in delete:
                    del expected[k]
                r["repair"] = states["TN-bravo repair"]
                r["deleted_by_repair"] = len(delete)
            dest = dests[org]
            if dest.startswith("s3://"):
                dest = os.path.join(a.dir, "s3", dest[len("s3://"):])
            got, files = parquet_ids(dest)
            r["files"] = files
        elif job["kind"] == "exactly-once":
            got, r["aborted_records"] = committed_ids(f.kafka, job["topic"], job["id"])
        else:
            got = kafka_ids(f.kafka, job["topic"])
        r["lost"], r["extra"] = compare(expected, got)
        r["duplicated"] = sum(n - 1 for n in got.values() if n > 1)
        bad = r["lost"] > 0 or (job["kind"] != "at-least-once" and r["extra"] > 0)
        bad |= r["state"] != "succeeded" or r.get("repair", "succeeded") != "succeeded"
        r["ok"] = not bad
        ok &= not bad
        results[org] = r

    summary = {
        "workers": a.workers, "slots": a.slots, "jobs": len(jobs), "events": events,
        "input_mb": round(in_bytes / 1e6, 1), "elapsed_s": round(elapsed, 1),
        "mb_per_s": round(in_bytes / 1e6 / elapsed, 2), "ok": ok, "results": results,
    }
    if chaos:
        summary["faults_injected"] = dict(chaos.injected)
        summary["faults_recovered"] = {k: len(v) for k, v in chaos.recovered.items()}
        summary["recovery_s"] = {k: {"median": round(sorted(v)[len(v) // 2], 1),
                                     "max": round(max(v), 1)}
                                 for k, v in chaos.recovered.items()}
        summary["no_recovery_seen"] = dict(chaos.unrecovered)
        with open(os.path.join(a.dir, "faults.json"), "w") as out:
            json.dump(chaos.events, out, indent=1)
    print(json.dumps(summary))
    return 0 if ok else 1


def repair(f, dataset, keys):
    """Submits the keyed repair once (a second submission would be a second change) and returns
    its job id, found in the job list when the CLI lost its coordinator while waiting."""
    for name, addr in [c for _ in range(30) for c in f.coordinators.items()]:
        if f.rewind("jobs", "--coordinator", addr, "--json", check=False).returncode != 0:
            time.sleep(1)
            continue
        r = f.rewind("repair", "--dataset", dataset, "--key", "event_id", "--delete", keys,
                     "--priority", "interactive", "--coordinator", addr, "--json", check=False)
        try:
            return json.loads(r.stdout)["job_id"]
        except (ValueError, KeyError):
            log(f"repair through {name}: exit {r.returncode}: {r.stderr.strip()[-300:]}")
            listed = json.loads(f.api("jobs", "--json"))
            ours = [j for j in listed if j["source"] == dataset]
            if ours:
                return ours[0]["job_id"]
            raise RuntimeError("the repair was not submitted")
    raise RuntimeError("no coordinator to submit the repair to")


def wait_jobs(f, jobs, limit=3600):
    states = {}
    t0 = time.time()
    while len(states) < len(jobs) and time.time() - t0 < limit:
        for org, job in jobs.items():
            if org in states:
                continue
            st = json.loads(f.api("status", job["id"], "--json"))
            if st.get("state") in ("succeeded", "failed", "cancelled"):
                states[org] = st["state"]
                log(f"{org}: {job['kind']} {st['state']} after {time.time() - t0:.0f} s")
        time.sleep(2)
    for org in jobs:
        states.setdefault(org, "timed out")
    return states


if __name__ == "__main__":
    sys.exit(main())
