"""TVM's E2B door, exercised by the official E2B Python SDK (`pip install e2b`).

Usage: e2b-check.py BASE_URL TOKEN OTHER_TOKEN

BASE_URL is a pyrovm (or a pyroshell in front of one) booting real microVMs; the
SDK is pointed at it the documented way: E2B_API_URL=BASE/e2b,
E2B_SANDBOX_URL=BASE/e2b/envd, E2B_API_KEY=TOKEN. Every check uses only the SDK's
public API and fails loudly; each unsupported call must raise the SDK's own error
type with TVM's message, within a deadline (never a hang).
"""

import os
import sys
import threading
import time

BASE, TOKEN, OTHER = sys.argv[1], sys.argv[2], sys.argv[3]
os.environ["E2B_API_URL"] = f"{BASE}/e2b"
os.environ["E2B_SANDBOX_URL"] = f"{BASE}/e2b/envd"
os.environ["E2B_API_KEY"] = TOKEN

from e2b import (  # noqa: E402  (the environment must be set first)
    CommandExitException,
    NotFoundException,
    Sandbox,
    SandboxException,
)

checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise SystemExit(f"FAIL: {what}")
    checks += 1
    print(f"  ok  {what}")


def within(seconds, fn, what):
    """Runs fn; fails if it takes longer than `seconds` (a hang is a failure)."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise SystemExit(f"FAIL: {what} did not return within {seconds} s")
    return out


def raises(fn, kind, needle, what):
    out = within(60, fn, what)
    e = out.get("error")
    check(
        isinstance(e, kind) and needle in str(e),
        f"{what} raises {kind.__name__} mentioning {needle!r} (got {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
    )
    return e


t0 = time.monotonic()
sbx = Sandbox.create(timeout=300, metadata={"suite": "e2b-check"}, envs={"GREETING": "hello"})
check(sbx.sandbox_id.startswith("sb-"), f"Sandbox.create() -> {sbx.sandbox_id} in {time.monotonic() - t0:.2f} s")

# commands.run: output, exit code, env, cwd
r = sbx.commands.run("echo out; echo err >&2; echo $GREETING; pwd")
check(r.exit_code == 0, "a command exits 0")
check(r.stdout == "out\nhello\n/home/user\n", f"stdout, the sandbox env and /home/user as cwd ({r.stdout!r})")
check(r.stderr == "err\n", f"stderr ({r.stderr!r})")
r = sbx.commands.run("echo $X; cd /tmp && pwd", envs={"X": "per-command"})
check(r.stdout == "per-command\n/tmp\n", f"per-command envs ({r.stdout!r})")
chunks = []
sbx.commands.run("for i in 1 2 3; do echo line$i; done", on_stdout=chunks.append)
check("".join(chunks) == "line1\nline2\nline3\n", "on_stdout gets the output as it comes")

e = raises(lambda: sbx.commands.run("echo partial; echo bad >&2; exit 3"), CommandExitException, "exited with code 3", "a failing command")
check(e.exit_code == 3 and e.stdout == "partial\n" and e.stderr == "bad\n", "CommandExitException carries exit code, stdout, stderr")

# background, list, kill
h = sbx.commands.run("sleep 120", background=True)
check(h.pid > 1, f"background=True returns a handle at once (pid {h.pid})")
listed = sbx.commands.list()
check(any(p.pid == h.pid for p in listed), f"commands.list() shows it ({[p.pid for p in listed]})")
# Other calls are served while it runs.
check(sbx.commands.run("echo alongside").stdout == "alongside\n", "a command runs while the background one does")
check(h.kill() is True, "handle.kill() -> True")
e = within(30, h.wait, "wait after kill").get("error")
check(isinstance(e, CommandExitException) and e.exit_code == -1, f"a killed command ends with exit code -1 ({e!r})")
check(sbx.commands.kill(h.pid) is False, "killing it again -> False (not found)")
check(all(p.pid != h.pid for p in sbx.commands.list()), "it is gone from commands.list()")

# stdin
h = sbx.commands.run("cat; echo done", background=True, stdin=True)
sbx.commands.send_stdin(h.pid, "hello from stdin\n")
sbx.commands.send_stdin(h.pid, "second line\n")
sbx.commands.close_stdin(h.pid)
r = within(30, h.wait, "wait for cat").get("value")
check(r is not None and r.stdout == "hello from stdin\nsecond line\ndone\n", f"stdin reaches the command ({getattr(r, 'stdout', None)!r})")

# connect to a running command
h = sbx.commands.run("sleep 1; echo late", background=True)
h2 = sbx.commands.connect(h.pid)
r = within(30, h2.wait, "wait via connect").get("value")
check(r is not None and "late" in r.stdout, "commands.connect(pid) follows a running command")

# files
info = sbx.files.write("notes/hello.txt", "hi there\n")
check(info.path == "/home/user/notes/hello.txt", f"files.write (text, relative path, parents made) -> {info.path}")
check(sbx.files.read("notes/hello.txt") == "hi there\n", "files.read text")
blob = bytes(range(256)) * 64
sbx.files.write("/home/user/blob.bin", blob)
check(bytes(sbx.files.read("/home/user/blob.bin", format="bytes")) == blob, "files.write/read bytes (16 KiB, every byte value)")
check(sbx.commands.run("cat notes/hello.txt").stdout == "hi there\n", "a written file is seen by commands")
sbx.commands.run("echo from-command > made.txt")
check(sbx.files.read("made.txt") == "from-command\n", "a command's file is read back")
names = sorted(e.name for e in sbx.files.list("/home/user"))
check({"notes", "blob.bin", "made.txt"} <= set(names), f"files.list ({names})")
deep = [e.path for e in sbx.files.list("/home/user", depth=2)]
check("/home/user/notes/hello.txt" in deep, "files.list depth=2")
check(sbx.files.make_dir("/home/user/newdir/sub") is True, "files.make_dir -> True")
check(sbx.files.make_dir("/home/user/newdir/sub") is False, "files.make_dir of an existing dir -> False")
check(sbx.files.exists("newdir/sub") is True, "files.exists")
st = sbx.files.get_info("blob.bin")
check(st.size == len(blob) and st.type.value == "file", f"files.get_info ({st.size}, {st.type})")
sbx.files.rename("made.txt", "moved.txt")
check(sbx.files.exists("moved.txt") and not sbx.files.exists("made.txt"), "files.rename")
sbx.files.remove("newdir")
check(sbx.files.exists("newdir") is False, "files.remove (recursive)")
raises(lambda: sbx.files.read("no/such/file"), NotFoundException, "no/such/file", "reading a missing file")
sbx.files.write("/tmp/scratch.txt", "tmp ok")
check(sbx.files.read("/tmp/scratch.txt") == "tmp ok", "absolute paths outside home (/tmp)")
raises(lambda: sbx.files.write("/etc/passwd", "x"), SandboxException, "", "writing outside the user's files is refused")

# lifetime
before = sbx.get_info().end_at
sbx.set_timeout(900)
after = sbx.get_info().end_at
check(after > before, f"set_timeout moves the end ({before} -> {after})")
check(sbx.get_info().metadata.get("suite") == "e2b-check", "metadata comes back in get_info")
ids = [s.sandbox_id for s in Sandbox.list().next_items()]
check(sbx.sandbox_id in ids, "Sandbox.list() lists it")
check(sbx.is_running() is True, "is_running()")

# unsupported: the SDK's own error, TVM's words, no hang
raises(lambda: sbx.pause(), SandboxException, "not supported", "pause()")
raises(lambda: sbx.files.watch_dir("/home/user", lambda e: None), SandboxException, "not supported", "files.watch_dir")
raises(lambda: sbx.pty.create(size=__import__("e2b").PtySize(rows=24, cols=80)), SandboxException, "not supported", "pty.create")
raises(lambda: sbx.commands.run("id", user="root"), SandboxException, "not available", "commands.run(user='root')")

# another token sees nothing of it
os.environ["E2B_API_KEY"] = OTHER
check(sbx.sandbox_id not in [s.sandbox_id for s in Sandbox.list().next_items()], "another token's Sandbox.list() does not show it")
raises(lambda: Sandbox.connect(sbx.sandbox_id), NotFoundException, "", "another token cannot connect to it")
check(Sandbox.kill(sbx.sandbox_id) is False, "another token's kill -> False")
os.environ["E2B_API_KEY"] = TOKEN

# kill
check(sbx.kill() is True, "kill() -> True")
check(sbx.sandbox_id not in [s.sandbox_id for s in Sandbox.list().next_items()], "gone from Sandbox.list()")
check(sbx.is_running() is False, "is_running() is False after kill")
check(Sandbox.kill(sbx.sandbox_id) is False, "killing it again -> False")
print(f"e2b-check: {checks} checks passed against {BASE}")
