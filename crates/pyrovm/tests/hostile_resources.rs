//! Hostile programs that exhaust resources, each in Python and in Bash, sent through
//! the HTTP API to real microVMs (snapshot clones): processes, memory, disk, output,
//! CPU. For each: the right `status`, an answer within its deadline, the service
//! healthy afterwards and no VM left; stopping each server asserts that no runtime dir
//! and no snapshot file remains. Each case prints `| case | lang | status | wall ms | note |`.

mod common;

use common::hostile::*;
use serde_json::json;

// --- resource hogs -----------------------------------------------------------------

const FORK_BOMB_PY: &str = r#"
import os, time
me = os.getpid()
cgroup = open("/proc/self/cgroup").read().strip().split("::")[1]
forks = 0
while True:
    try:
        os.fork()
    except OSError as e:
        if os.getpid() == me:
            events = open(f"/sys/fs/cgroup{cgroup}/pids.events").read().split()
            peak = open(f"/sys/fs/cgroup{cgroup}/pids.peak").read().strip()
            print(f"fork refused after {forks} forks: {e.strerror}", flush=True)
            print("pids.events", *events, flush=True)
            print("pids.peak", peak, flush=True)
            os._exit(3)
        time.sleep(0.01)
    else:
        if os.getpid() == me:
            forks += 1
"#;

const FORK_BOMB_SH: &str = r#"
bomb() { bomb | bomb & }
bomb
until (( SECONDS >= 3 )); do :; done
read -r cgroup < /proc/self/cgroup
read -r events < "/sys/fs/cgroup${cgroup#0::}/pids.events"
read -r peak < "/sys/fs/cgroup${cgroup#0::}/pids.peak"
echo "pids.events $events"
echo "pids.peak $peak"
exit 3
"#;

const MEMORY_HOG_PY: &str = "x = bytearray(1 << 30)\nprint('survived', len(x))\n";

const MEMORY_HOG_SH: &str = "s=x\nwhile :; do s+=$s; done\necho survived\n";

const DISK_FILL_PY: &str = r#"
import errno
def fill(d):
    n = 0
    chunk = bytes(1 << 20)
    try:
        with open(f"{d}/fill", "wb", buffering=0) as f:
            while True:
                n += f.write(chunk)
    except OSError as e:
        print(f"{d} full at {n >> 20} MiB: {errno.errorcode[e.errno]}", flush=True)
        return e
fill("/work")
raise fill("/tmp")
"#;

const DISK_FILL_SH: &str = r#"
cat /dev/zero > /work/fill; rc=$?
echo "/work full at $(( $(stat -c %s /work/fill) >> 20 )) MiB: cat exit $rc"
cat /dev/zero > /tmp/fill; rc=$?
echo "/tmp full at $(( $(stat -c %s /tmp/fill) >> 20 )) MiB: cat exit $rc"
exit $rc
"#;

const OUTPUT_FLOOD_PY: &str = r#"
import os, threading
def flood(fd, byte):
    chunk = byte * 65536
    while True:
        os.write(fd, chunk)
threading.Thread(target=flood, args=(2, b"e"), daemon=True).start()
flood(1, b"o")
"#;

const OUTPUT_FLOOD_SH: &str = "yes out &\nyes err >&2\n";

/// Fork bomb, memory hog, disk fill, output flood on both streams.
#[tokio::test]
async fn resource_hogs_are_contained() {
    let Some(srv) = start(&[256, 64]).await else {
        return;
    };

    for (lang, code) in [("python", FORK_BOMB_PY), ("bash", FORK_BOMB_SH)] {
        let r = run(
            &srv,
            "fork bomb",
            lang,
            code,
            json!({"timeout_ms": 10000, "max_processes": 16}),
        )
        .await;
        r.expect_status("completed");
        assert_eq!(r.exit_code(), Some(3), "{}", r.context());
        let refused = number_after(r.stdout(), "pids.events max ").unwrap_or(0);
        assert!(
            refused > 0,
            "the pids limit never refused a fork: {}",
            r.context()
        );
        let peak = number_after(r.stdout(), "pids.peak ").unwrap_or(u64::MAX);
        assert!(peak <= 16, "{peak} tasks in the job: {}", r.context());
        r.row(&format!(
            "max_processes 16; peak {peak} tasks, {refused} forks refused; the program's own exit 3"
        ));
        healthy(&srv, &r).await;
    }

    for (lang, code) in [("python", MEMORY_HOG_PY), ("bash", MEMORY_HOG_SH)] {
        let r = run(
            &srv,
            "memory hog",
            lang,
            code,
            json!({"timeout_ms": 20000, "memory_mb": 64}),
        )
        .await;
        r.expect_status("memory_limit");
        assert_eq!(r.signal(), Some("SIGKILL"), "{}", r.context());
        r.expect_stdout_lacks("survived");
        r.row("memory_mb 64; OOM-killed (SIGKILL)");
        healthy(&srv, &r).await;
    }

    for (lang, code) in [("python", DISK_FILL_PY), ("bash", DISK_FILL_SH)] {
        let r = run(
            &srv,
            "disk fill /work + /tmp",
            lang,
            code,
            json!({"timeout_ms": 20000}),
        )
        .await;
        r.expect_status("completed");
        assert!(
            r.exit_code().is_some_and(|c| c != 0) || r.signal() == Some("SIGXFSZ"),
            "expected a non-zero exit or SIGXFSZ: {}",
            r.context()
        );
        for dir in ["/work", "/tmp"] {
            let mib = number_after(r.stdout(), &format!("{dir} full at ")).unwrap_or(0);
            // Both are 64 MiB tmpfs mounts and RLIMIT_FSIZE is 64 MiB.
            assert!(
                (32..=64).contains(&mib),
                "{dir} filled to {mib} MiB: {}",
                r.context()
            );
        }
        let how = match (r.exit_code(), r.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (_, Some(s)) => s.to_string(),
            _ => "?".into(),
        };
        r.row(&format!("{}; {how}", r.lines_with("/")));
        healthy(&srv, &r).await;
    }

    let cap = 65_536usize;
    for (lang, code, out_chars, err_chars) in [
        ("python", OUTPUT_FLOOD_PY, "o", "e"),
        ("bash", OUTPUT_FLOOD_SH, "out\n", "err\n"),
    ] {
        let r = run(
            &srv,
            "output flood stdout + stderr",
            lang,
            code,
            json!({"timeout_ms": 20000, "max_output_bytes": cap}),
        )
        .await;
        r.expect_status("output_limit");
        let mut notes = Vec::new();
        for (name, text, chars) in [
            ("stdout", r.stdout(), out_chars),
            ("stderr", r.stderr(), err_chars),
        ] {
            let truncated = r.v[format!("{name}_truncated")] == true;
            assert!(text.len() <= cap, "{name} over the cap: {}", r.context());
            if truncated {
                assert_eq!(
                    text.len(),
                    cap,
                    "{name} truncated below the cap: {}",
                    r.context()
                );
            }
            assert!(
                text.chars().all(|c| chars.contains(c)),
                "{name} holds bytes of the other stream: {}",
                r.context()
            );
            notes.push(format!(
                "{name} {} B{}",
                text.len(),
                if truncated { " (truncated)" } else { "" }
            ));
        }
        assert!(
            r.v["stdout_truncated"] == true || r.v["stderr_truncated"] == true,
            "output_limit without a truncated stream: {}",
            r.context()
        );
        r.row(&format!("cap {cap} B; {}", notes.join(", ")));
        healthy(&srv, &r).await;
    }

    srv.stop().await;
}

// --- runaway CPU -------------------------------------------------------------------

const BUSY_PY: &str = r#"
import os, threading
def spin():
    while True:
        pass
for _ in range(7):
    if os.fork() == 0:
        break
for _ in range(3):
    threading.Thread(target=spin, daemon=True).start()
spin()
"#;

const BUSY_SH: &str = "for i in {1..15}; do while :; do :; done & done\nwhile :; do :; done\n";

/// An infinite loop and a busy loop in many processes and threads end as `timeout`, on time.
#[tokio::test]
async fn runaway_cpu_times_out_on_time() {
    let Some(srv) = start(&[256]).await else {
        return;
    };
    let timeout_ms = 2_000u64;
    for (case, lang, code, note) in [
        ("infinite loop", "python", "while True: pass\n", "1 process"),
        (
            "infinite loop",
            "bash",
            "while :; do :; done\n",
            "1 process",
        ),
        (
            "busy loop, many tasks",
            "python",
            BUSY_PY,
            "8 processes x 4 threads",
        ),
        ("busy loop, many tasks", "bash", BUSY_SH, "16 processes"),
    ] {
        let r = run(&srv, case, lang, code, json!({"timeout_ms": timeout_ms})).await;
        r.expect_status("timeout");
        let exec = r.exec_ms();
        assert!(
            (timeout_ms..=timeout_ms + TIMEOUT_SLACK_MS).contains(&exec),
            "killed {exec} ms after start: {}",
            r.context()
        );
        r.row(&format!(
            "timeout_ms {timeout_ms}; {note}; killed at {exec} ms"
        ));
        healthy(&srv, &r).await;
    }
    srv.stop().await;
}

// --- privilege and escape attempts ----------------------------------------------------
