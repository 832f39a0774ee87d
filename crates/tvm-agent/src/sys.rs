//! Small system calls the agent needs: clock, entropy, loopback, power-off.

use std::os::fd::AsRawFd;

/// Milliseconds since the guest kernel started (from /proc/uptime).
pub(crate) fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .and_then(|s| s.parse::<f64>().ok())
        .map(|secs| (secs * 1000.0) as u64)
        .unwrap_or(0)
}

/// Sets CLOCK_REALTIME to the host's clock (a restored snapshot keeps a stale one).
pub(crate) fn set_clock(unix_ns: u64) -> nix::Result<()> {
    let ts = nix::sys::time::TimeSpec::new(
        (unix_ns / 1_000_000_000) as libc::time_t,
        (unix_ns % 1_000_000_000) as libc::c_long,
    );
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
}

/// Mixes host-provided bytes into the kernel RNG, credits them (RNDADDENTROPY), and
/// forces a reseed of the kernel's CRNG (RNDRESEEDCRNG): without the reseed a
/// restored clone would keep drawing from the snapshot's CRNG key for up to a minute.
pub(crate) fn add_entropy(bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    #[repr(C)]
    struct RandPoolInfo {
        entropy_count: libc::c_int,
        buf_size: libc::c_int,
        buf: [u8; 256],
    }
    let n = bytes.len().min(256);
    let mut info = RandPoolInfo {
        entropy_count: (n * 8) as libc::c_int,
        buf_size: n as libc::c_int,
        buf: [0; 256],
    };
    info.buf[..n].copy_from_slice(&bytes[..n]);
    // Opened once (before the snapshot, in a template): one open and close less per job.
    static URANDOM: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    let f = match URANDOM.get() {
        Some(f) => f,
        None => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/urandom")?;
            URANDOM.get_or_init(|| f)
        }
    };
    // RNDADDENTROPY = _IOW('R', 0x03, int[2])
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    // SAFETY: the fd is open; `info` is a live, correctly laid out rand_pool_info whose
    // buf_size matches the bytes that follow, and the kernel only reads from it.
    let rc = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            RNDADDENTROPY as _,
            &info as *const RandPoolInfo,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // RNDRESEEDCRNG = _IO('R', 0x07)
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    // SAFETY: the fd is open; RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Brings `lo` up so programs can use 127.0.0.1; the VM has no other interface.
pub(crate) fn loopback_up() {
    // SAFETY: plain socket(2); the result is checked and wrapped in an OwnedFd at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the socket is open and `req` names "lo"; SIOCGIFFLAGS fills ifru_flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return;
    }
    // SAFETY: ifru_flags is the union member SIOCGIFFLAGS just wrote.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
}

/// Syncs nothing (the rootfs is read-only), powers the VM off; never returns.
pub fn power_off() -> ! {
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // If power-off is refused the host's deadline still destroys the VM.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
