#!/usr/bin/env python3
"""What the gateway costs: the same requests straight to an upstream and through
`pyroshell --mode forward`, interleaved in one run (medians and ratios). A benchmark,
not a test; writes docs/bench/gateway.json.

Upstream: `pyroshell --mode embedded` (pyrovm in-process, one warm pool of snapshot
clones). Requests: GET /v1/languages (no VM: pure proxy cost), POST /v1/execute
`bash: true` (a pool hit), and an SSE run's time to first byte.
Needs target/release/pyroshell and a guest image. Stdlib only.
"""
import json, os, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.environ.get("TVM_IMAGE_DIR") or os.path.expanduser("~/.cache/tvm/current")
SHELL = os.path.join(ROOT, "target/release/pyroshell")
N_CHEAP = int(os.environ.get("BENCH_N_CHEAP", "400"))
N_EXEC = int(os.environ.get("BENCH_N", "20"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name, config, args, d):
    cfg = os.path.join(d, name + ".toml")
    with open(cfg, "w") as f:
        f.write(config)
    p = subprocess.Popen([SHELL, "--config", cfg] + args, stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(d, name + ".log"), "w"))
    return p


def wait(url, status=200, within=120):
    end = time.time() + within
    while time.time() < end:
        try:
            if urllib.request.urlopen(url, timeout=2).status == status:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{url} never answered {status}")


def timed(req):
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
    return (time.perf_counter() - t) * 1000


def first_byte(req):
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read(1)
        ttfb = (time.perf_counter() - t) * 1000
        r.read()
    return ttfb


def execute_req(base, path="/v1/execute", code="true"):
    body = json.dumps({"language": "bash", "code": code}).encode()
    return urllib.request.Request(base + path, data=body, headers={"content-type": "application/json"})


def med(xs):
    return round(statistics.median(xs), 3)


def p99(xs):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 3)


def main():
    d = tempfile.mkdtemp(prefix="tvm-gwbench-")
    up_port, gw_port = free_port(), free_port()
    up = start("upstream", f'listen = "127.0.0.1:{up_port}"\nruntime_dir = "{d}/run"\nimage_dir = "{IMAGE}"\n'
               "[[pool]]\nvcpus = 1\nmemory_mb = 256\nsize = 2\n", ["--mode", "embedded"], d)
    gw = start("gateway", f'listen = "127.0.0.1:{gw_port}"\n[forward]\nupstream = "http://127.0.0.1:{up_port}"\n',
               ["--mode", "forward"], d)
    direct, via = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
    try:
        wait(direct + "/readyz")
        wait(via + "/readyz")
        time.sleep(8)  # the pool's template, snapshot and clones
        res = {}
        for name, make, n, fn in [
            ("languages_ms", lambda b: b + "/v1/languages", N_CHEAP, timed),
            ("execute_pool_hit_ms", lambda b: execute_req(b), N_EXEC, timed),
            ("sse_first_byte_ms", lambda b: execute_req(b, "/v1/execute/stream", "echo x; sleep 0.2"), N_EXEC, first_byte),
        ]:
            a, b = [], []
            vm = name != "languages_ms"
            for i in range(n):  # interleaved, order alternating, so drift hits both alike
                for side in ((a, direct), (b, via)) if i % 2 == 0 else ((b, via), (a, direct)):
                    side[0].append(fn(make(side[1])))
                    if vm:
                        time.sleep(2.0)  # the pool refills (restore + priming) before the next
            res[name] = {"n": n, "direct_p50": med(a), "gateway_p50": med(b),
                         "added_p50": round(med(b) - med(a), 3), "ratio_p50": round(med(b) / med(a), 3),
                         "direct_p99": p99(a), "gateway_p99": p99(b)}
        for p in (up, gw):
            rss = int([l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1]) // 1024
            res.setdefault("rss_mib", {})["upstream" if p is up else "gateway"] = rss
        print(json.dumps(res, indent=2))
        out = os.path.join(ROOT, "docs/bench/gateway.json")
        with open(out, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    finally:
        for p in (gw, up):
            p.terminate()
            p.wait(timeout=120)


if __name__ == "__main__":
    main()
