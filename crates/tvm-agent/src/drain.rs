//! Pipes a sandbox job left behind. A process started in the background keeps its
//! exec's stdout/stderr after the exec has reported; reading (and dropping) what it
//! writes keeps it from dying of `EPIPE`. One thread polls all such pipes, so a job
//! that hoards pipe ends (or many execs that leave background processes) costs the
//! agent no thread and no buffer per pipe.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Pipes drained at most; beyond, the oldest is closed (its writer then gets EPIPE).
const MAX_PIPES: usize = 256;

static INBOX: OnceLock<Mutex<mpsc::Sender<OwnedFd>>> = OnceLock::new();

/// Hands a pipe's read end over to the drainer (started on first use).
pub(crate) fn adopt(fd: OwnedFd) {
    let inbox = INBOX.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || run(rx));
        Mutex::new(tx)
    });
    let tx = inbox.lock().unwrap_or_else(|e| e.into_inner());
    // The drainer never exits, so this only fails if its thread could not start:
    // then the pipe is simply closed.
    let _ = tx.send(fd);
}

fn run(inbox: mpsc::Receiver<OwnedFd>) {
    let mut pipes: Vec<OwnedFd> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if pipes.is_empty() {
            match inbox.recv() {
                Ok(fd) => pipes.push(fd),
                Err(_) => return,
            }
        }
        while let Ok(fd) = inbox.try_recv() {
            pipes.push(fd);
        }
        if pipes.len() > MAX_PIPES {
            pipes.drain(..pipes.len() - MAX_PIPES);
        }
        let ready: Vec<(usize, PollFlags)> = {
            let mut fds: Vec<PollFd> = pipes
                .iter()
                .map(|p| PollFd::new(p.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, PollTimeout::from(200u16)) {
                Ok(0) | Err(_) => Vec::new(),
                Ok(_) => fds
                    .iter()
                    .enumerate()
                    .filter_map(|(i, f)| f.revents().filter(|r| !r.is_empty()).map(|r| (i, r)))
                    .collect(),
            }
        };
        let mut dead = Vec::new();
        for (i, revents) in ready {
            if revents.contains(PollFlags::POLLIN) {
                match nix::unistd::read(pipes[i].as_raw_fd(), &mut buf) {
                    Ok(0) => dead.push(i),
                    Ok(_) | Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                    Err(_) => dead.push(i),
                }
            } else {
                // POLLHUP / POLLERR / POLLNVAL with nothing left to read.
                dead.push(i);
            }
        }
        for i in dead.into_iter().rev() {
            pipes.swap_remove(i);
        }
        if pipes.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
