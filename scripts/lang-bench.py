#!/usr/bin/env python3
"""`make bench`, per language: hello world compiled and run inside TVM against the same
program compiled and run directly on the host, in the same run.

For every language of guest/languages.toml: LANG_BENCH_N (default 5) executions through
POST /v1/execute on a pyrovm of our own (its default pool and snapshot; wall time at the
client, plus the server's timings_ms and compile.duration_ms), interleaved with as many
runs on the host of the very same compile and run commands (the table's argv, {file} {dir}
{stem} substituted in a fresh temp dir per run, the table's env with its /tmp paths moved
into that temp dir, the guest agent's default env). Reports medians and TVM/host.
A language whose host toolchain is missing is still measured in TVM ("host: not installed").
Prints a markdown table and writes target/lang-bench.json. Stdlib only (Python >= 3.11).

Env: TVM_IMAGE_DIR (default ~/.cache/tvm/current), PYROVM_BIN, LANG_BENCH_N (5),
LANG_BENCH_WARMUP (1 untimed run of each side per language), LANG_BENCH_LANGS
(comma-separated subset), LANG_BENCH_OUT (default target/lang-bench.json),
LANG_BENCH_WARM_TABLE=1 (the snapshot template also runs the table's `warm` commands;
default: pyrovm's default warm-up, i.e. what a user gets).
"""
import json, os, shutil, socket, statistics, subprocess, sys, tempfile, time, tomllib
import urllib.error, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.environ.get("TVM_IMAGE_DIR") or os.path.expanduser("~/.cache/tvm/current")
N = int(os.environ.get("LANG_BENCH_N", "5"))
WARMUP = int(os.environ.get("LANG_BENCH_WARMUP", "1"))
WARM_TABLE = os.environ.get("LANG_BENCH_WARM_TABLE") == "1"
TABLE = os.path.join(ROOT, "guest/languages.toml")
OUT = os.environ.get("LANG_BENCH_OUT") or os.path.join(ROOT, "target/lang-bench.json")
EXPECT = "hello, world\n"

HELLO = {
    "python": 'print("hello, world")\n',
    "javascript": 'console.log("hello, world");\n',
    "bash": 'echo "hello, world"\n',
    "c": '#include <stdio.h>\nint main(void) { puts("hello, world"); return 0; }\n',
    "cpp": '#include <iostream>\nint main() { std::cout << "hello, world" << std::endl; return 0; }\n',
    "rust": 'fn main() { println!("hello, world"); }\n',
    "go": 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello, world") }\n',
    "java": 'public class Main {\n    public static void main(String[] args) {\n'
            '        System.out.println("hello, world");\n    }\n}\n',
    "typescript": 'const msg: string = "hello, world";\nconsole.log(msg);\n',
    "ruby": 'puts "hello, world"\n',
    "php": '<?php\necho "hello, world\\n";\n',
    "perl": 'print "hello, world\\n";\n',
    "lua": 'print("hello, world")\n',
}


def median(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 1) if xs else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pyrovm_bin():
    if os.environ.get("PYROVM_BIN"):
        return os.environ["PYROVM_BIN"]
    for b in ("target/release/pyrovm", "target/debug/pyrovm"):
        p = os.path.join(ROOT, b)
        if os.access(p, os.X_OK):
            return p
    sys.exit("no pyrovm: run `cargo build --release -p pyrovm`")


class Server:
    """A pyrovm of our own on a free port: pyrovm's default pool (written out, so that we
    know its size) of snapshot clones."""

    POOL_SIZE, POOL_MB = 2, 256

    def __init__(self, langs):
        self.dir = tempfile.mkdtemp(prefix="tvm-lang-bench-")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cfg = os.path.join(self.dir, "lang-bench.toml")
        text = (f'listen = "127.0.0.1:{port}"\nboot_timeout_ms = 60000\n'
                f'runtime_dir = "{self.dir}/run"\nimage_dir = "{IMAGE}"\n'
                f'[[pool]]\nvcpus = 1\nmemory_mb = {self.POOL_MB}\nsize = {self.POOL_SIZE}\n')
        if WARM_TABLE:
            warm = [["/usr/bin/python3", "-c", "import random, json, os"]]
            warm += [w for l in langs for w in l.get("warm", []) if w not in warm]
            text += f"[snapshot]\nenabled = true\nwarm = {json.dumps(warm)}\nwarm_timeout_ms = 120000\n"
        open(cfg, "w").write(text)
        self.log = os.path.join(self.dir, "log")
        self.bin = pyrovm_bin()
        self.proc = subprocess.Popen([self.bin, "--config", cfg], stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "w"))
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pyrovm exited: {open(self.log).read()[-2000:]}")
            try:
                urllib.request.urlopen(self.url + "/readyz", timeout=1)
                break
            except OSError:
                if time.monotonic() - t0 > 60:
                    raise RuntimeError("pyrovm not ready within 60 s") from None
                time.sleep(0.05)
        self.pool_size = self.POOL_SIZE
        self.wait_pool(timeout=300)
        self.ready_s = time.monotonic() - t0

    def metric(self, name, label=""):
        text = urllib.request.urlopen(self.url + "/metrics", timeout=10).read().decode()
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                   if l.startswith(name) and label in l)

    def wait_pool(self, timeout=180):
        """Before each request: the pool full again, so every request is a pool hit."""
        end = time.time() + timeout
        while self.pool_size and self.metric("tvm_pool_ready_vms") < self.pool_size:
            if time.time() > end:
                raise RuntimeError("pool did not fill")
            time.sleep(0.05)

    def backend(self):
        try:
            log = open(self.log).read()
        except OSError:
            return None
        for b in ("qemu-kvm", "qemu-tcg", "firecracker"):
            if b in log:
                return b
        return None

    def languages(self):
        with urllib.request.urlopen(self.url + "/v1/languages", timeout=10) as r:
            v = json.load(r)
        return v.get("languages", v) if isinstance(v, dict) else v

    def execute(self, lang, code):
        body = json.dumps({"language": lang, "code": code}).encode()
        req = urllib.request.Request(self.url + "/v1/execute", body, {"content-type": "application/json"})
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                v = json.load(r)
        except urllib.error.HTTPError as e:
            return (time.monotonic() - t0) * 1000, {"status": f"http {e.code}", "error": e.read()[:500].decode()}
        return (time.monotonic() - t0) * 1000, v

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def code_file(lang, code):
    """The table's file name; Java names the file after its public class (as pyrovm does)."""
    name = lang["file_name"]
    if lang.get("public_class_file") and "public class Main" in code:
        name = "Main." + name.rsplit(".", 1)[1]
    return name


def subst(arg, path):
    d, name = path.rsplit("/", 1)
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return arg.replace("{file}", path).replace("{dir}", d or "/").replace("{stem}", stem)


def host_missing(lang):
    """The table's programs that the host lacks (they are absolute paths)."""
    progs = {a[0] for a in (lang.get("compile"), lang["command"]) if a}
    return sorted(p for p in progs if not p.startswith("{") and not os.access(p, os.X_OK))


def host_once(lang, code):
    """The same compile and run as in the guest, in a fresh temp dir (the guest's /tmp and
    work dir are fresh per request too): (total ms, compile ms or None, error or None)."""
    top = tempfile.mkdtemp(prefix="tvm-lang-host-")
    work, tmp = os.path.join(top, "work"), os.path.join(top, "tmp")
    os.makedirs(work)
    os.makedirs(tmp)
    path = os.path.join(work, code_file(lang, code))
    open(path, "w").write(code)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "USER": os.environ.get("USER", "root"),
           "LANG": "C.UTF-8", "TMPDIR": tmp, "PYTHONDONTWRITEBYTECODE": "1"}
    for k, v in lang.get("env", {}).items():  # GOCACHE=/tmp/.cache/... -> <temp>/tmp/.cache/...
        env[k] = tmp + v[4:] if v == "/tmp" or v.startswith("/tmp/") else v
    try:
        t0 = time.monotonic()
        compile_ms = None
        if lang.get("compile"):
            c = subprocess.run([subst(a, path) for a in lang["compile"]], cwd=work, env=env,
                               capture_output=True, text=True, timeout=600)
            compile_ms = (time.monotonic() - t0) * 1000
            if c.returncode != 0:
                return None, compile_ms, f"compile exit {c.returncode}: {c.stderr[-300:]}"
        r = subprocess.run([subst(a, path) for a in lang["command"]], cwd=work, env=env,
                           capture_output=True, text=True, timeout=600)
        total = (time.monotonic() - t0) * 1000
        if r.returncode != 0 or r.stdout != EXPECT:
            return None, compile_ms, f"exit {r.returncode}, stdout {r.stdout[:100]!r}, stderr {r.stderr[-300:]!r}"
        return total, compile_ms, None
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, None, str(e)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def tvm_once(server, lang, code):
    """(wall ms, timings_ms, compile.duration_ms, error or None)."""
    server.wait_pool()
    wall, v = server.execute(lang["name"], code)
    comp = (v.get("compile") or {}).get("duration_ms")
    if v.get("status") != "completed" or v.get("stdout") != EXPECT:
        why = {k: v.get(k) for k in ("status", "error", "stdout", "stderr", "exit_code")}
        if v.get("compile"):
            why["compile_stderr"] = (v["compile"].get("stderr") or "")[-300:]
        return None, v.get("timings_ms"), comp, json.dumps(why)[:600]
    return wall, v.get("timings_ms"), comp, None


def fmt(x, unit=" ms"):
    return "—" if x is None else f"{x:.0f}{unit}"


def main():
    t_start = time.monotonic()
    langs = tomllib.load(open(TABLE, "rb"))["language"]
    only = [s.strip() for s in os.environ.get("LANG_BENCH_LANGS", "").split(",") if s.strip()]
    if only:
        langs = [l for l in langs if l["name"] in only]
    print(f"lang-bench: {len(langs)} languages, N={N} (+{WARMUP} warm-up) each, image {IMAGE}", file=sys.stderr)
    server = Server(langs)
    res = {"machine": {"cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "kernel": os.uname().release, "load_avg_start": os.getloadavg()},
           "n": N, "warmup": WARMUP, "image_dir": IMAGE, "pyrovm": server.bin,
           "server": {"ready_s": round(server.ready_s, 2), "pool_size": server.pool_size,
                      "snapshot_warm": "table" if WARM_TABLE else "pyrovm default"},
           "method": ("per language, interleaved host then TVM runs; TVM = POST /v1/execute wall time at the "
                      "client with the pool full before each request (a pool hit of a snapshot clone); host = "
                      "the table's compile + run argv in a fresh temp dir per run, table env with /tmp paths "
                      "moved into it; medians"),
           "languages": {}}
    res["machine"]["backend"] = server.backend()
    try:
        served = {l.get("name") for l in server.languages() if isinstance(l, dict)}
    except Exception:  # informative only
        served = None
    try:
        for lang in langs:
            name = lang["name"]
            code = HELLO.get(name)
            row = {"compiles": bool(lang.get("compile")), "version": lang.get("version")}
            res["languages"][name] = row
            if code is None:
                row["error"] = "no hello world program in lang-bench.py"
                print(f"{name}: no hello world program", file=sys.stderr)
                continue
            if served is not None and name not in served:
                row["tvm_error"] = "not served by this pyrovm"
            missing = host_missing(lang)
            row["host_installed"] = not missing
            if missing:
                row["host_missing"] = missing
            host, host_comp, host_err = [], [], []
            tvm, timings, srv_comp, tvm_err = [], [], [], []
            t_lang = time.monotonic()
            takes = None
            for i in range(WARMUP + N):
                timed = i >= WARMUP
                if i == WARMUP:
                    takes = [server.metric("tvm_pool_takes", f'result="{r}"') for r in ("hit", "miss")]
                if not missing:
                    h, hc, he = host_once(lang, code)
                    if timed:
                        host.append(h)
                        if he:
                            host_err.append(he)
                        else:
                            host_comp.append(hc)
                if "tvm_error" not in row:
                    w, tm, sc, te = tvm_once(server, lang, code)
                    if timed:  # server timings of successful runs only, like the wall times
                        tvm.append(w)
                        if te:
                            tvm_err.append(te)
                        else:
                            timings.append(tm or {})
                            srv_comp.append(sc)
            row["tvm_pool"] = {r: int(server.metric("tvm_pool_takes", f'result="{r}"') - t)
                               for r, t in zip(("hit", "miss"), takes)}
            ok_tvm = [x for x in tvm if x is not None]
            ok_host = [x for x in host if x is not None]
            row["tvm_ms"] = {"p50": median(ok_tvm), "samples": [None if x is None else round(x, 1) for x in tvm],
                             "failed": len(tvm) - len(ok_tvm)}
            row["tvm_server_timings_ms_p50"] = {k: median([t.get(k) for t in timings])
                                               for k in ("queued", "vm_start", "exec", "total")}
            row["tvm_server_compile_ms_p50"] = median(srv_comp) if row["compiles"] else None
            if not missing:
                row["host_ms"] = {"p50": median(ok_host), "samples": [None if x is None else round(x, 1) for x in host],
                                  "failed": len(host) - len(ok_host),
                                  "compile_p50": median(host_comp) if row["compiles"] else None}
            if tvm_err:
                row["tvm_errors"] = tvm_err[:3]
            if host_err:
                row["host_errors"] = host_err[:3]
            hp, tp = (row.get("host_ms") or {}).get("p50"), row["tvm_ms"]["p50"]
            row["ratio_tvm_over_host"] = tp / hp if tp and hp else None
            row["seconds"] = round(time.monotonic() - t_lang, 1)
            row["load_avg_1m_after"] = round(os.getloadavg()[0], 2)  # other work on the host skews both sides
            print(f"{name}: TVM p50 {fmt(tp)} (compile {fmt(row['tvm_server_compile_ms_p50'])}), "
                  f"host p50 {fmt(hp) if not missing else 'not installed'}"
                  + (f", {len(tvm_err)} TVM failures: {tvm_err[0]}" if tvm_err else "")
                  + (f", {len(host_err)} host failures: {host_err[0]}" if host_err else "")
                  + f" [{row['seconds']} s]", file=sys.stderr)
    finally:
        server.stop()
    res["seconds_total"] = round(time.monotonic() - t_start, 1)
    res["machine"]["load_avg_end"] = os.getloadavg()

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    json.dump(res, open(OUT, "w"), indent=2)

    m = res["machine"]
    print(f"\nhello world, compile + run, p50 of N={N} ({m['backend'] or 'pyrovm'}, {m['cores']} cores; "
          f"pool of {server.pool_size:.0f} snapshot clones, snapshot warm-up: {res['server']['snapshot_warm']}; "
          f"host load avg {m['load_avg_start'][0]:.1f} at start, {m['load_avg_end'][0]:.1f} at end)\n")
    print("| language | compiles? | TVM p50 total | TVM p50 compile (server) | TVM p50 exec (server) | host p50 | TVM/host |")
    print("|---|---|---|---|---|---|---|")
    for name, r in res["languages"].items():
        if "tvm_ms" not in r:
            print(f"| {name} | {'yes' if r['compiles'] else 'no'} | {r.get('error', '—')} | | | | |")
            continue
        t = r["tvm_ms"]
        tvm_cell = fmt(t["p50"]) + (f" ({t['failed']}/{N} failed)" if t["failed"] else "")
        if r.get("tvm_error"):
            tvm_cell = r["tvm_error"]
        if not r["host_installed"]:
            host_cell = "host: not installed"
        else:
            h = r["host_ms"]
            host_cell = fmt(h["p50"]) + (f" ({h['failed']}/{N} failed)" if h["failed"] else "")
        ratio = f"{r['ratio_tvm_over_host']:.1f}×" if r["ratio_tvm_over_host"] else "—"
        comp = fmt(r["tvm_server_compile_ms_p50"]) if r["compiles"] else "—"
        print(f"| {name} | {'yes' if r['compiles'] else 'no'} | {tvm_cell} | {comp} | "
              f"{fmt(r['tvm_server_timings_ms_p50']['exec'])} | {host_cell} | {ratio} |")
    print(f"\n{res['seconds_total']:.0f} s in all (pyrovm ready + pool full in {res['server']['ready_s']} s); "
          f"JSON: {os.path.relpath(OUT, ROOT) if OUT.startswith(ROOT + '/') else OUT}")


if __name__ == "__main__":
    main()
