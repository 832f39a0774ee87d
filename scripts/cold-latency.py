#!/usr/bin/env python3
"""Median (and spread) of N cold executions through a running TVM server.

Usage: scripts/cold-latency.py [URL] [N]   (default http://127.0.0.1:8080, 10)
Each request boots a fresh microVM; requests run one after another.
"""
import json, statistics, sys, time, urllib.request

url = (sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080").rstrip("/")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 10
body = json.dumps({"language": "python", "code": "print(1)"}).encode()
rows = []
for _ in range(n):
    req = urllib.request.Request(url + "/v1/execute", body, {"content-type": "application/json"})
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=120) as r:
        v = json.load(r)
    wall = (time.monotonic() - t0) * 1000
    assert v["status"] == "completed" and v["stdout"] == "1\n", v
    rows.append((wall, v["timings_ms"]["vm_start"], v["timings_ms"]["exec"]))

def line(name, xs):
    xs = sorted(xs)
    print(f"{name:<10} median {statistics.median(xs):7.0f} ms   min {xs[0]:7.0f}   max {xs[-1]:7.0f}")

print(f"{n} cold python print(1) executions via {url} (backend {v['backend']})")
line("wall", [r[0] for r in rows])
line("vm_start", [r[1] for r in rows])
line("exec", [r[2] for r in rows])
