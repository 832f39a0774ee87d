//! The host's TSC frequency, for `tsc_early_khz=` on TCG guests (whose TSC is the host's).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Host TSC frequency in kHz: from sysfs where the kernel exports it, else measured
/// once against CLOCK_MONOTONIC over 50 ms. `None` off x86_64.
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(|| {
        if let Some(khz) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            return Some(khz);
        }
        measure()
    })
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u64> {
    let mut samples = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        let c0 = rdtsc();
        std::thread::sleep(Duration::from_millis(20));
        let c1 = rdtsc();
        let ns = t0.elapsed().as_nanos() as u64;
        if ns > 0 && c1 > c0 {
            samples.push((c1 - c0) * 1_000_000 / ns);
        }
    }
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied()
}

#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64 and only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn measures_a_plausible_frequency() {
        let khz = super::host_tsc_khz().unwrap();
        assert!((500_000..10_000_000).contains(&khz), "{khz} kHz");
    }
}
