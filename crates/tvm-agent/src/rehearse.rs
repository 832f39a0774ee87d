//! A dress rehearsal of the job path, so that a pooled VM's first job does not pay
//! for first times.
//!
//! Under QEMU TCG a new VMM process — a restored clone as much as a cold boot — has an
//! empty translation cache: every guest code path it runs for the first time is
//! translated first, and a clone's first write to each page of the template's RAM is
//! a copy-on-write fault. Measured on the 2-core TCG box (pool-hit `bash true`, 25
//! runs each), the rehearsal alone cut the platform overhead (total − exec) from a
//! median of 36 ms to 9, and the program's own exec time by a quarter to a third
//! (the dynamic loader and libc are translated already).
//!
//! The rehearsal runs the code a job runs — decoding a `Run`, writing and removing a
//! file in the work dir, a cgroup with limits, a fixed program (`/bin/echo`) spawned
//! as the job user with pipes, reader threads and the reaper, encoding the `Exit` —
//! with nothing of it left behind: its file and cgroup are removed, its output
//! discarded. It runs no user code.
//!
//! It is part of answering `Warm`: the host sends that to a template before the
//! snapshot (where the rehearsal is wasted but harmless) and, under TCG only, to a
//! pooled VM while it waits (`pool_prime`; skipped while executions fill the cores).
//! So it costs pool refills, never a request, and a VM started for a request at
//! once (a pool miss) does not wait for it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use tvm_proto::{BlockingChannel, GuestMsg, HostMsg, Job, JobLimits};

use crate::cgroup::JobCgroup;
use crate::{files, job};

/// Name of the rehearsal's file and cgroup; no job uses it.
const NAME: &str = "tvm-rehearsal";

/// Goes through the job path once; nothing of it is left behind.
pub(crate) fn rehearse() {
    // The channel's decoding and encoding, over memory.
    let wire = Mem::default();
    let mut host: BlockingChannel<_, GuestMsg, HostMsg> = BlockingChannel::new(wire.clone());
    if host.send(HostMsg::Run(Box::new(fixed_job()))).is_err() {
        return;
    }
    let mut agent: BlockingChannel<_, HostMsg, GuestMsg> = BlockingChannel::new(wire.clone());
    let Ok(HostMsg::Run(job)) = agent.recv() else {
        return;
    };
    if files::write(&tvm_proto::JobFile {
        path: job.code_file.clone(),
        content: job.code.clone(),
    })
    .is_ok()
    {
        files::remove(&job.code_file);
    }
    let Ok(cg) = JobCgroup::create_named(NAME, job.limits.memory_bytes, job.limits.max_processes)
    else {
        return;
    };
    let mut send = |m: GuestMsg| {
        wire.clear();
        agent.send(m)
    };
    if let Ok(report) = job::execute(&job, &cg, job.limits.workdir_bytes, false, false, &mut send) {
        let _ = send(GuestMsg::Exit(report));
    }
    cg.remove();
    wire.clear();
}

/// The rehearsal's job: a fixed program, no user input.
fn fixed_job() -> Job {
    Job {
        argv: vec!["/bin/echo".into(), NAME.into()],
        code_file: format!(".{NAME}"),
        code: b"echo\n".to_vec(),
        stdin: Vec::new(),
        env: BTreeMap::new(),
        files: Vec::new(),
        limits: JobLimits {
            timeout_ms: 5_000,
            memory_bytes: 64 << 20,
            max_processes: 8,
            max_output_bytes: 4096,
            workdir_bytes: 1 << 20,
        },
        clock_unix_ns: 0,
        entropy: Vec::new(),
        egress: false,
    }
}

/// A loopback byte pipe: what is written is read back.
#[derive(Clone, Default)]
struct Mem(Arc<Mutex<std::collections::VecDeque<u8>>>);

impl Mem {
    fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = buf.len().min(q.len());
        for (dst, src) in buf.iter_mut().zip(q.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_frame_goes_through_the_loopback_intact() {
        let wire = Mem::default();
        let mut host: BlockingChannel<_, GuestMsg, HostMsg> = BlockingChannel::new(wire.clone());
        host.send(HostMsg::Run(Box::new(fixed_job()))).unwrap();
        let mut agent: BlockingChannel<_, HostMsg, GuestMsg> = BlockingChannel::new(wire.clone());
        match agent.recv().unwrap() {
            HostMsg::Run(job) => assert_eq!(*job, fixed_job()),
            other => panic!("got {other:?}"),
        }
        agent.send(GuestMsg::Done).unwrap();
        assert!(matches!(host.recv().unwrap(), GuestMsg::Done));
        wire.clear();
        assert!(matches!(host.recv(), Err(tvm_proto::CodecError::Closed)));
    }
}
