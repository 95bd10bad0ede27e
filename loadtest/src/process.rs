//! Facts about processes read from the operating system: the resident
//! memory and CPU time of a broker process from `/proc/PID/status` and
//! `/proc/PID/stat` (Linux only).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Resident set size of process `pid` in bytes (`VmRSS`), or `None` when
/// the process is gone or the file cannot be parsed.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU time of process `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after its
    // closing parenthesis start at field 3 (state). utime and stime are
    // fields 14 and 15.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), usually 100.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Samples the CPU use of one process every second and keeps the highest
/// one-second value since the last [`CpuSampler::take_peak`]. The process
/// can be swapped (a restarted broker has a new pid) with
/// [`CpuSampler::follow`].
#[derive(Clone)]
pub struct CpuSampler {
    pid: Arc<AtomicU32>,
    /// Peak CPU use in hundredths of a percent of one core.
    peak: Arc<AtomicU32>,
}

impl CpuSampler {
    /// Starts sampling `pid` until `stop` is cancelled.
    pub fn start(pid: u32, stop: CancellationToken) -> Self {
        let sampler = CpuSampler {
            pid: Arc::new(AtomicU32::new(pid)),
            peak: Arc::new(AtomicU32::new(0)),
        };
        tokio::spawn(sampler.clone().run(stop));
        sampler
    }

    /// Samples process `pid` from now on.
    pub fn follow(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
    }

    /// Returns the peak CPU use since the last call, in percent of one core
    /// (200 means both cores of a two-core machine were busy), and resets it.
    pub fn take_peak(&self) -> f64 {
        f64::from(self.peak.swap(0, Ordering::Relaxed)) / 100.0
    }

    async fn run(self, stop: CancellationToken) {
        let ticks_per_second = clock_ticks_per_second() as f64;
        let mut previous: Option<(u32, u64, Instant)> = None;
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            let pid = self.pid.load(Ordering::Relaxed);
            let Some(ticks) = cpu_ticks(pid) else {
                previous = None;
                continue;
            };
            let now = Instant::now();
            if let Some((last_pid, last_ticks, last_at)) = previous
                && last_pid == pid
            {
                let seconds = now.duration_since(last_at).as_secs_f64();
                let busy = ticks.saturating_sub(last_ticks) as f64 / ticks_per_second;
                let hundredths = (busy / seconds * 10_000.0).round() as u32;
                self.peak.fetch_max(hundredths, Ordering::Relaxed);
            }
            previous = Some((pid, ticks, now));
        }
    }
}

/// Samples the resident memory of one process every second and keeps the
/// highest value seen.
#[derive(Clone)]
pub struct RssSampler {
    /// Peak VmRSS in bytes.
    peak: Arc<AtomicU64>,
}

impl RssSampler {
    /// Starts sampling `pid` until `stop` is cancelled.
    pub fn start(pid: u32, stop: CancellationToken) -> Self {
        let sampler = RssSampler {
            peak: Arc::new(AtomicU64::new(0)),
        };
        let peak = sampler.peak.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = interval.tick() => {}
                }
                if let Some(bytes) = rss_bytes(pid) {
                    peak.fetch_max(bytes, Ordering::Relaxed);
                }
            }
        });
        sampler
    }

    /// Returns the peak RSS in bytes, or `None` when no sample was taken.
    pub fn peak(&self) -> Option<u64> {
        Some(self.peak.load(Ordering::Relaxed)).filter(|&bytes| bytes > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_rss_and_cpu() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0, "VmRSS of this process is 0");
        assert!(cpu_ticks(pid).is_some(), "cannot parse /proc/{pid}/stat");
    }

    #[test]
    fn missing_process_reads_as_none() {
        // PID 0 is never a user process and has no /proc entry.
        assert_eq!(rss_bytes(0), None);
        assert_eq!(cpu_ticks(0), None);
    }
}
