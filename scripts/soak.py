#!/usr/bin/env python3
"""`make soak`: many mixed executions against one pyrovm, then leak checks.

Runs SOAK_N (default 1000) executions at SOAK_CONCURRENCY (default 2) — normal
python/bash runs, timeouts, OOMs, crashes (signals), output floods and invalid
requests — against a pyrovm binary with its default pool of snapshot clones, then
asserts: every answer was the expected status, no VMM process, VM dir, socket,
fd or cgroup leaked (counted before and after, with the pool's own VMs allowed),
and pyrovm's RSS grew less than SOAK_RSS_MIB (default 64). After SIGTERM nothing
of the instance may remain. CI runs it with SOAK_N=100 against the debug binary.
Stdlib only.
"""
import concurrent.futures as cf, json, os, random, shutil, signal, socket, subprocess
import sys, tempfile, time, urllib.error, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.environ.get("TVM_IMAGE_DIR") or os.path.expanduser("~/.cache/tvm/current")
PYROVM = os.environ.get("PYROVM_BIN") or os.path.join(ROOT, "target/release/pyrovm")
N = int(os.environ.get("SOAK_N", "1000"))
CONC = int(os.environ.get("SOAK_CONCURRENCY", "2"))
RSS_MIB = int(os.environ.get("SOAK_RSS_MIB", "64"))

# (name, weight, request body, acceptable statuses in the response / HTTP code)
CASES = [
    ("python", 30, {"language": "python", "code": "print(sum(range(10)))"}, {"completed"}),
    ("bash", 20, {"language": "bash", "code": "echo $((6*7))"}, {"completed"}),
    ("timeout", 10, {"language": "python", "code": "while True: pass",
                     "limits": {"timeout_ms": 500}}, {"timeout"}),
    ("oom", 10, {"language": "python", "code": "x = bytearray(400 << 20)\nx[::4096] = b'x' * len(x[::4096])",
                 "limits": {"memory_mb": 64, "timeout_ms": 20000}}, {"memory_limit"}),
    ("crash", 10, {"language": "python", "code": "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"},
     {"completed"}),
    ("flood", 5, {"language": "bash", "code": "yes | head -c 5000000",
                  "limits": {"max_output_bytes": 4096}}, {"output_limit"}),
    ("invalid", 5, {"language": "cobol", "code": "x"}, {400}),
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metric(url, name):
    return sum(float(l.rsplit(" ", 1)[1]) for l in get(url + "/metrics").splitlines()
               if l.startswith(name) and not l.startswith("#"))


def post(url, body):
    req = urllib.request.Request(url + "/v1/execute", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def proc_stats(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
    return fds, rss


def qemu_pids(run_root):
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if run_root.encode() in cmd and b"pyrovm" not in cmd.split(b"\0")[0]:
            out.append(int(pid))
    return out


def cgroups(instance):
    found = []
    for line in open("/proc/self/mounts"):
        f = line.split()
        if f[2] in ("cgroup", "cgroup2"):
            d = os.path.join(f[1], "tvm", instance)
            if os.path.isdir(d):
                found += [os.path.join(d, x) for x in os.listdir(d) if os.path.isdir(os.path.join(d, x))]
    return found


def counts(run_root, instance, pid):
    inst = os.path.join(run_root, instance)
    sockets = sum(1 for dp, _, fs in os.walk(run_root) for f in fs
                  if os.path.exists(os.path.join(dp, f)) and
                  __import__("stat").S_ISSOCK(os.lstat(os.path.join(dp, f)).st_mode))
    fds, rss = proc_stats(pid)
    return {"vmm": len(qemu_pids(run_root)), "vm_dirs": len(os.listdir(os.path.join(inst, "vms"))),
            "sockets": sockets, "fds": fds, "rss_kib": rss, "cgroups": len(cgroups(instance))}


def wait_steady(url, pool, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        # A free slot means its VM is gone (VMs are destroyed right after the answer).
        if metric(url, "tvm_slots_in_use") == 0 and metric(url, "tvm_pool_ready_vms") >= pool:
            time.sleep(1.5)  # let refills settle
            return
        time.sleep(0.2)
    raise SystemExit("soak: the service did not settle")


def main():
    if not os.path.exists(PYROVM):
        raise SystemExit(f"soak: {PYROVM} is missing (cargo build --release, or set PYROVM_BIN)")
    work = tempfile.mkdtemp(prefix="tvm-soak-")
    run_root = os.path.join(work, "run")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = os.path.join(work, "soak.toml")
    pool = 2
    open(cfg, "w").write(f'listen = "127.0.0.1:{port}"\nimage_dir = "{IMAGE}"\nruntime_dir = "{run_root}"\n'
                         f'max_concurrency = {max(CONC, 2)}\n[[pool]]\nvcpus = 1\nmemory_mb = 256\nsize = {pool}\n')
    log = open(os.path.join(work, "pyrovm.log"), "w")
    p = subprocess.Popen([PYROVM, "--config", cfg], stdout=subprocess.DEVNULL, stderr=log)
    ok = False
    try:
        for _ in range(300):
            try:
                get(url + "/healthz", 1)
                break
            except OSError:
                time.sleep(0.1)
        instance = os.listdir(run_root)[0]
        wait_steady(url, pool, 180)
        # Warm-up round so allocator and connection pools reach steady state.
        for name, _, body, _ in CASES:
            post(url, body)
        wait_steady(url, pool)
        before = counts(run_root, instance, p.pid)
        rng = random.Random(7)
        plan = rng.choices(CASES, weights=[c[1] for c in CASES], k=N)
        tally, bad = {}, []
        t0 = time.time()

        def one(case):
            name, _, body, want = case
            code, v = post(url, body)
            got = code if code != 200 else v.get("status")
            if code == 429:  # over capacity is a valid answer under load; retry once later
                time.sleep(1)
                code, v = post(url, body)
                got = code if code != 200 else v.get("status")
            return name, got, got in want

        with cf.ThreadPoolExecutor(CONC) as ex:
            for i, (name, got, good) in enumerate(ex.map(one, plan), 1):
                tally.setdefault(name, {}).setdefault(str(got), 0)
                tally[name][str(got)] += 1
                if not good:
                    bad.append((name, got))
                if i % 100 == 0:
                    print(f"soak: {i}/{N} done, {len(bad)} unexpected", file=sys.stderr)
        secs = time.time() - t0
        wait_steady(url, pool)
        after = counts(run_root, instance, p.pid)
        rss_growth_mib = (after["rss_kib"] - before["rss_kib"]) / 1024
        print(f"| case | answers |\n|---|---|")
        for name, t in sorted(tally.items()):
            print(f"| {name} | {', '.join(f'{k}: {v}' for k, v in sorted(t.items()))} |")
        print(f"\n{N} executions in {secs:.0f} s ({N / secs:.2f}/s) at concurrency {CONC}")
        print(f"before: {before}\nafter:  {after}\npyrovm RSS growth: {rss_growth_mib:+.1f} MiB (bound {RSS_MIB})")
        problems = []
        if bad:
            problems.append(f"{len(bad)} unexpected answers, e.g. {bad[:5]}")
        for k in ("vmm", "vm_dirs", "sockets", "cgroups"):
            if after[k] > before[k]:
                problems.append(f"{k}: {before[k]} -> {after[k]}")
        if after["fds"] > before["fds"] + 2:
            problems.append(f"fds: {before['fds']} -> {after['fds']}")
        if rss_growth_mib > RSS_MIB:
            problems.append(f"RSS grew {rss_growth_mib:.1f} MiB")
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
        if p.returncode != 0:
            problems.append(f"pyrovm exited {p.returncode}")
        leftovers = os.listdir(run_root) + ([] if not os.path.isdir(f"/dev/shm/tvm/{instance}") else ["shm"])
        if leftovers or qemu_pids(run_root) or cgroups(instance):
            problems.append(f"after SIGTERM: {leftovers}, qemu {qemu_pids(run_root)}, cgroups {cgroups(instance)}")
        if problems:
            print("SOAK FAILED:\n  " + "\n  ".join(problems))
            print(f"(log kept in {work})")
            sys.exit(1)
        print("soak: OK — nothing leaked")
        ok = True
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if ok:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
