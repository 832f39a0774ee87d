//! Hostile programs that try to escape, each in Python and in Bash, through the HTTP
//! API to real microVMs (snapshot clones): kill the agent, crash the guest kernel, read
//! raw devices and another process's memory, mount, open sockets, write garbage to the
//! agent's channel. For each: refused, the right `status` in time, the service healthy
//! and no VM left. Each case prints `| case | lang | status | wall ms | note |`.

mod common;

use common::hostile::*;
use serde_json::json;

const KILL_PY: &str = r#"
import os, signal, time
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
os.kill(-1, signal.SIGKILL)  # every process this user may signal, but PID 1 and the caller
_, st = os.waitpid(child, 0)
print("kill(-1, SIGKILL): own child ended by signal", os.WTERMSIG(st) if os.WIFSIGNALED(st) else None, flush=True)
for sig in (signal.SIGSTOP, signal.SIGTERM):
    try:
        os.kill(1, sig)
        print("SIGNALLED PID 1 with", sig.name, flush=True)
    except PermissionError as e:
        print(f"kill(1, {sig.name}): {e.strerror}", flush=True)
os.kill(1, signal.SIGKILL)
"#;

const KILL_SH: &str = r#"
sleep 30 &
child=$!
kill -9 -1; echo "kill -9 -1: exit $?"
wait $child; echo "own child: wait status $?"
kill -9 1
"#;

const CRASH_PY: &str = r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
if libc.reboot(0x4321FEDC) != 0:  # RB_POWER_OFF
    print("reboot(POWER_OFF):", errno.errorcode[ctypes.get_errno()], flush=True)
open("/proc/sysrq-trigger", "w").write("c")
"#;

const CRASH_SH: &str = "echo c > /proc/sysrq-trigger\n";

const RAW_DEVICES_PY: &str = r#"
import errno, os
for p in ["/dev/vda", "/dev/vdb", "/dev/mem", "/dev/kmem", "/dev/port"]:
    for mode, flags in (("read", os.O_RDONLY), ("write", os.O_WRONLY)):
        try:
            fd = os.open(p, flags)
            print("OPENED", p, "for", mode, flush=True)
            os.close(fd)
        except OSError as e:
            print(f"refused {p} {mode}: {errno.errorcode[e.errno]}", flush=True)
"#;

const RAW_DEVICES_SH: &str = r#"
for p in /dev/vda /dev/vdb /dev/mem /dev/kmem /dev/port; do
    if out=$(head -c 512 "$p" 2>&1 >/dev/null); then echo "OPENED $p for read"; else echo "refused $p read: ${out##*: }"; fi
    if out=$( { printf x > "$p"; } 2>&1 ); then echo "OPENED $p for write"; else echo "refused $p write: ${out##*: }"; fi
done
"#;

const MOUNT_PY: &str = r#"
import ctypes, errno, os
print("no_new_privs:", [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs:")][0], flush=True)
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
MS_REMOUNT, MS_BIND = 32, 4096
os.makedirs("/tmp/m", exist_ok=True)
for what, src, target, fstype, flags in [
    ("tmpfs", b"none", b"/tmp/m", b"tmpfs", 0),
    ("proc", b"proc", b"/tmp/m", b"proc", 0),
    ("bind", b"/", b"/tmp/m", None, MS_BIND),
    ("remount / rw", None, b"/", None, MS_REMOUNT),
]:
    if libc.mount(src, target, fstype, flags, None) == 0:
        print("MOUNTED", what, flush=True)
    else:
        print(f"mount({what}): {errno.errorcode[ctypes.get_errno()]}", flush=True)
if libc.unshare(0x10000000 | 0x00020000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
    print("unshare(user+mount ns):", errno.errorcode[ctypes.get_errno()], flush=True)
else:
    print("UNSHARED", flush=True)
if any(l.split()[1] == "/tmp/m" for l in open("/proc/self/mounts")):
    print("MOUNTED /tmp/m is in the mount table", flush=True)
"#;

const MOUNT_SH: &str = r#"
while read -r key value; do [[ $key == NoNewPrivs: ]] && echo "no_new_privs: $value"; done < /proc/self/status
mkdir -p /tmp/m
for args in "-t tmpfs none /tmp/m" "-t proc proc /tmp/m" "--bind / /tmp/m" "-o remount,rw /"; do
    if out=$(mount $args 2>&1); then echo "MOUNTED: mount $args"; else echo "mount $args: refused: ${out%%$'\n'*}"; fi
done
if out=$(unshare -r -m true 2>&1); then echo "UNSHARED"; else echo "unshare -r -m: refused: ${out%%$'\n'*}"; fi
while read -r _ target _; do [[ $target == /tmp/m ]] && echo "MOUNTED /tmp/m is in the mount table"; done < /proc/self/mounts
true
"#;

const SOCKETS_PY: &str = r#"
import errno, os, socket
def attempt(label, fn):
    try:
        fn()
        print("REACHED", label, flush=True)
    except OSError as e:
        print(f"refused {label}: {errno.errorcode.get(e.errno, 'timeout' if isinstance(e, TimeoutError) else e)}", flush=True)
def tcp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect((host, port))
def udp():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("1.1.1.1", 53))
def vsock(cid, port):
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect((cid, port))
attempt("tcp 1.1.1.1:80", lambda: tcp("1.1.1.1", 80))
attempt("tcp 10.0.2.2:80 (host)", lambda: tcp("10.0.2.2", 80))
attempt("udp 1.1.1.1:53", udp)
attempt("vsock cid 2 port 1024 (host)", lambda: vsock(2, 1024))
attempt("packet raw", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)))
attempt("inet raw icmp", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
print("interfaces:", *sorted(os.listdir("/sys/class/net")), flush=True)
"#;

const SOCKETS_SH: &str = r#"
for t in tcp/1.1.1.1/80 tcp/10.0.2.2/80 udp/1.1.1.1/53; do
    if out=$( { exec 3<>"/dev/$t" && printf x >&3; } 2>&1 ); then echo "REACHED $t"; else echo "refused $t: ${out##*: }"; fi
done
echo "interfaces:" /sys/class/net/*
"#;

const CHANNEL_PY: &str = r#"
import errno, glob, os, stat
garbage = b"\x7f\xff\xff\xff" + b"not a frame " * 100
for p in sorted(set(glob.glob("/dev/vport*p*") + glob.glob("/dev/hvc*") + ["/dev/ttyS0", "/dev/console"])):
    try:
        fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
        print("WROTE", p, os.write(fd, garbage), "bytes", flush=True)
        os.close(fd)
    except OSError as e:
        print(f"refused {p}: {errno.errorcode[e.errno]}", flush=True)
openable = []
for root, dirs, files in os.walk("/dev"):
    for name in dirs + files:
        p = os.path.join(root, name)
        mode = os.lstat(p).st_mode
        if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            continue
        for flags in (os.O_RDONLY, os.O_WRONLY):
            try:
                os.close(os.open(p, flags | os.O_NONBLOCK | os.O_NOCTTY))
                openable.append(p)
                break
            except OSError:
                pass
print("openable:", *sorted(openable), flush=True)
extra = []
for fd in os.listdir("/proc/self/fd"):
    try:
        if int(fd) > 2:
            extra.append(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
    except OSError:
        pass  # the directory listing's own fd, closed by now
print("inherited fds:", *(extra or ["none"]), flush=True)
"#;

const CHANNEL_SH: &str = r#"
shopt -s nullglob globstar
for p in /dev/vport*p* /dev/hvc* /dev/ttyS0 /dev/console; do
    if out=$( { printf '\x7f\xff\xff\xffnot a frame' > "$p"; } 2>&1 ); then echo "WROTE $p"; else echo "refused $p: ${out##*: }"; fi
done
openable=()
for p in /dev/**; do
    [[ -c $p || -b $p ]] || continue
    if { : < "$p"; } 2>/dev/null || { : >> "$p"; } 2>/dev/null; then openable+=("$p"); fi
done
echo "openable: ${openable[*]}"
# Listed by a child, so this shell holds no pipe or directory fd of its own meanwhile.
ls -l /proc/$$/fd > /tmp/fds
extra=""
while read -r -a f; do
    (( ${#f[@]} > 3 )) || continue
    n=${f[-3]} t=${f[-1]}
    (( n > 2 )) && [[ $t != /work/main.sh ]] && extra+=" $n->$t"
done < /tmp/fds
echo "inherited fds:${extra:- none}"
"#;

const PROC1_PY: &str = r#"
import ctypes, errno, os
for p in ["/proc/1/mem", "/proc/1/environ"]:
    try:
        with open(p, "rb") as f:
            print("READ", p, f.read(64), flush=True)
    except OSError as e:
        print(f"refused {p}: {errno.errorcode[e.errno]}", flush=True)
try:
    os.listdir("/proc/1/root/")
    print("READ /proc/1/root", flush=True)
except OSError as e:
    print(f"refused /proc/1/root: {errno.errorcode[e.errno]}", flush=True)
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
for name, req in (("PTRACE_ATTACH", 16), ("PTRACE_SEIZE", 0x4206)):
    if libc.ptrace(req, 1, None, None) == 0:
        print("ATTACHED to PID 1 with", name, flush=True)
    else:
        print(f"ptrace({name}, 1): {errno.errorcode[ctypes.get_errno()]}", flush=True)
"#;

const PROC1_SH: &str = r#"
for p in /proc/1/mem /proc/1/environ; do
    if out=$(head -c 64 "$p" 2>&1 >/dev/null); then echo "READ $p"; else echo "refused $p: ${out##*: }"; fi
done
if out=$(ls /proc/1/root/ 2>&1 >/dev/null); then echo "READ /proc/1/root"; else echo "refused /proc/1/root: ${out##*: }"; fi
"#;

/// Device nodes any user may open in a standard Linux system.
fn standard_device(path: &str) -> bool {
    matches!(
        path,
        "/dev/null"
            | "/dev/zero"
            | "/dev/full"
            | "/dev/random"
            | "/dev/urandom"
            | "/dev/tty"
            | "/dev/ptmx"
    ) || path.starts_with("/dev/pts/")
}

/// Killing the agent, crashing the guest kernel, raw devices, mounts, sockets, the
/// agent's channel, another process's memory: all refused, the service unharmed.
#[tokio::test]
async fn privilege_and_escape_attempts_are_refused() {
    let Some(srv) = start(&[256]).await else {
        return;
    };
    let limits = || json!({"timeout_ms": 15000});

    // The job runs as uid 1000: PID 1 (the agent) cannot be signalled; -1 reaches only the job's own processes.
    for (lang, code) in [("python", KILL_PY), ("bash", KILL_SH)] {
        let r = run(&srv, "kill -9 1 / kill -9 -1", lang, code, limits()).await;
        r.expect_refused_exit();
        r.expect_stdout_lacks("SIGNALLED");
        r.expect_stderr_has("Operation not permitted");
        let own = if lang == "python" {
            r.line_after("kill(-1, SIGKILL): own child ended by signal ")
                .to_string()
        } else {
            r.line_after("own child: wait status ").to_string()
        };
        assert!(
            own == "9" || own == "137",
            "kill -1 spared the job's own child: {}",
            r.context()
        );
        r.row(&format!(
            "PID 1: EPERM{}; kill -1 killed the job's own child ({}); exit {:?}",
            if lang == "python" {
                " (SIGKILL, SIGSTOP, SIGTERM)"
            } else {
                ""
            },
            if own == "9" { "SIGKILL" } else { "status 137" },
            r.exit_code().unwrap_or(-1)
        ));
        healthy(&srv, &r).await;
    }

    for (lang, code) in [("python", CRASH_PY), ("bash", CRASH_SH)] {
        let r = run(&srv, "echo c > /proc/sysrq-trigger", lang, code, limits()).await;
        r.expect_refused_exit();
        r.expect_stderr_has("sysrq-trigger");
        let why = ["Permission denied", "No such file or directory"]
            .into_iter()
            .find(|e| r.stderr().contains(e))
            .unwrap_or_else(|| panic!("no refusal reason: {}", r.context()));
        let extra = if lang == "python" {
            r.expect_stdout_has("reboot(POWER_OFF): EPERM");
            "; reboot(2): EPERM"
        } else {
            ""
        };
        r.row(&format!(
            "/proc/sysrq-trigger: {why} (no SysRq in the guest kernel){extra}; the VM lives on"
        ));
        healthy(&srv, &r).await;
    }

    for (lang, code) in [("python", RAW_DEVICES_PY), ("bash", RAW_DEVICES_SH)] {
        let r = run(&srv, "raw devices", lang, code, limits()).await;
        r.expect_status("completed");
        r.expect_stdout_lacks("OPENED");
        assert_eq!(
            r.stdout().matches("refused ").count(),
            10,
            "{}",
            r.context()
        );
        // The rootfs disk and the I/O port device exist: permission, not absence, stops them.
        for p in ["/dev/vda", "/dev/port"] {
            for mode in ["read", "write"] {
                let why = r.line_after(&format!("refused {p} {mode}: "));
                assert!(
                    why == "EACCES" || why == "Permission denied",
                    "{p} {mode}: {why}: {}",
                    r.context()
                );
            }
        }
        let absent: Vec<&str> = ["/dev/vdb", "/dev/mem", "/dev/kmem"]
            .into_iter()
            .filter(|p| {
                let why = r.line_after(&format!("refused {p} read: "));
                why == "ENOENT" || why == "No such file or directory"
            })
            .collect();
        r.row(&format!(
            "vda, port: EACCES (read, write); absent: {}",
            absent.join(", ")
        ));
        healthy(&srv, &r).await;
    }

    for (lang, code) in [("python", MOUNT_PY), ("bash", MOUNT_SH)] {
        let r = run(&srv, "mount", lang, code, limits()).await;
        r.expect_status("completed");
        r.expect_stdout_lacks("MOUNTED");
        r.expect_stdout_lacks("UNSHARED");
        // mount(8) is setuid root on the rootfs: no_new_privs is what keeps it unprivileged.
        assert_eq!(r.line_after("no_new_privs: "), "1", "{}", r.context());
        if lang == "python" {
            for what in ["tmpfs", "proc", "bind", "remount / rw"] {
                r.expect_stdout_has(&format!("mount({what}): EPERM"));
            }
            let unshare = r.line_after("unshare(user+mount ns): ");
            r.row(&format!(
                "mount(2) tmpfs, proc, bind, remount / rw: EPERM; unshare(user+mount ns): {unshare}"
            ));
        } else {
            assert_eq!(
                r.stdout().matches(": refused: ").count(),
                5,
                "{}",
                r.context()
            );
            // The first line of each refusal, reduced to its reason.
            let reason = |prefix: &str| -> Vec<&str> {
                let mut why: Vec<&str> = r
                    .stdout()
                    .lines()
                    .filter(|l| l.starts_with(prefix))
                    .filter_map(|l| l.rsplit_once(": ").map(|(_, e)| e.trim_end_matches('.')))
                    .collect();
                why.sort_unstable();
                why.dedup();
                why
            };
            r.row(&format!(
                "setuid mount(8) under no_new_privs, tmpfs/proc/--bind/remount rw: {}; unshare -r -m: {}",
                reason("mount ").join(" / "),
                reason("unshare ").join(" / ")
            ));
        }
        healthy(&srv, &r).await;
    }

    for (lang, code) in [("python", SOCKETS_PY), ("bash", SOCKETS_SH)] {
        let r = run(&srv, "sockets", lang, code, limits()).await;
        r.expect_status("completed");
        r.expect_stdout_lacks("REACHED");
        let tries = if lang == "python" { 6 } else { 3 };
        assert_eq!(
            r.stdout().matches("refused ").count(),
            tries,
            "{}",
            r.context()
        );
        let ifaces = r.line_after("interfaces: ");
        assert!(
            ifaces == "lo" || ifaces == "/sys/class/net/lo",
            "network interfaces: {ifaces}: {}",
            r.context()
        );
        let errors: Vec<String> = r
            .stdout()
            .lines()
            .filter_map(|l| l.strip_prefix("refused "))
            .map(str::to_string)
            .collect();
        r.row(&format!("{}; only lo", errors.join(", ")));
        healthy(&srv, &r).await;
    }

    for (lang, code) in [("python", CHANNEL_PY), ("bash", CHANNEL_SH)] {
        let r = run(&srv, "agent channel, /dev", lang, code, limits()).await;
        r.expect_status("completed");
        r.expect_stdout_lacks("WROTE");
        // The agent's virtio-serial port exists and is refused for permission.
        let port = r
            .stdout()
            .lines()
            .find(|l| l.starts_with("refused /dev/vport"))
            .unwrap_or_else(|| panic!("no agent port found: {}", r.context()));
        assert!(
            port.ends_with("EACCES") || port.ends_with("Permission denied"),
            "{}",
            r.context()
        );
        let refused: Vec<&str> = r
            .stdout()
            .lines()
            .filter_map(|l| l.strip_prefix("refused "))
            .filter_map(|l| l.split(':').next())
            .collect();
        assert!(
            refused.contains(&"/dev/ttyS0") && refused.contains(&"/dev/console"),
            "{}",
            r.context()
        );
        let openable: Vec<&str> = r.line_after("openable: ").split_whitespace().collect();
        let unexpected: Vec<&&str> = openable.iter().filter(|p| !standard_device(p)).collect();
        assert!(
            unexpected.is_empty(),
            "the job user can open {unexpected:?} under /dev: {}",
            r.context()
        );
        assert_eq!(r.line_after("inherited fds: "), "none", "{}", r.context());
        r.row(&format!(
            "garbage to {}: EACCES; openable: {}; no inherited fd",
            refused.join(", "),
            openable
                .iter()
                .map(|p| p.trim_start_matches("/dev/"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        healthy(&srv, &r).await;
    }

    for (lang, code) in [("python", PROC1_PY), ("bash", PROC1_SH)] {
        let r = run(&srv, "/proc/1/mem, environ, ptrace", lang, code, limits()).await;
        r.expect_status("completed");
        r.expect_stdout_lacks("READ");
        r.expect_stdout_lacks("ATTACHED");
        for p in ["/proc/1/mem", "/proc/1/environ", "/proc/1/root"] {
            let why = r.line_after(&format!("refused {p}: "));
            assert!(
                why == "EACCES" || why == "Permission denied",
                "{p}: {why}: {}",
                r.context()
            );
        }
        if lang == "python" {
            r.expect_stdout_has("ptrace(PTRACE_ATTACH, 1): EPERM");
            r.expect_stdout_has("ptrace(PTRACE_SEIZE, 1): EPERM");
            r.row("/proc/1/mem, environ, root: EACCES; ptrace ATTACH, SEIZE of PID 1: EPERM");
        } else {
            r.row("/proc/1/mem, environ, root: EACCES");
        }
        healthy(&srv, &r).await;
    }

    srv.stop().await;
}
