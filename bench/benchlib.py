"""What the benchmark scripts share: free loopback ports, waiting for a server, the CPU time of
finished children, and the archived events of an uncompressed archive with their places."""
import gzip, json, os, resource, socket, sys, time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=20):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def child_cpu():
    """User + system CPU seconds of every finished child so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def archived_events(src):
    """Every event below `src` (objects of concatenated JSON, plain or gzip) as
    (exact bytes, object key relative to src, byte offset in the decompressed object,
    event_id), in archive order."""
    events = []
    dec = json.JSONDecoder()
    for dirpath, _, files in sorted(os.walk(src)):
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            raw = open(path, "rb").read()
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            text = raw.decode("utf-8")
            key = os.path.relpath(path, src)
            i = 0
            while i < len(text):
                while i < len(text) and text[i].isspace():
                    i += 1
                if i >= len(text):
                    break
                obj, end = dec.raw_decode(text, i)
                # (Offsets in bytes, as Rewind's lineage gives them.)
                off = len(text[:i].encode("utf-8"))
                events.append((text[i:end].encode("utf-8"), key, off,
                               str(obj.get("event_id", off))))
                i = end
    return events


def measured(args, env=None):
    """Runs a command to its end; (CPU seconds, wall seconds, peak RSS MB, stdout bytes). Exits
    the benchmark when it fails."""
    import subprocess
    t0 = time.time()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, env=env)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{args[0]} failed with {status}")
    return ru.ru_utime + ru.ru_stime, time.time() - t0, ru.ru_maxrss / 1024, out


def start_etcd(data_dir):
    """A one-member etcd on free loopback ports, data in `data_dir`: (process, client port)."""
    import subprocess
    cport, pport = free_port(), free_port()
    etcd = subprocess.Popen(
        ["etcd", "--data-dir", data_dir, "--listen-client-urls", f"http://127.0.0.1:{cport}",
         "--advertise-client-urls", f"http://127.0.0.1:{cport}", "--listen-peer-urls",
         f"http://127.0.0.1:{pport}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
         "--initial-cluster", f"default=http://127.0.0.1:{pport}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(cport)
    return etcd, cport


def process_cpu(pid):
    """CPU seconds a running process has used so far (user + system)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_all(procs):
    """Terminates the processes a benchmark started and waits for each."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
