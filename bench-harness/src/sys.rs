//! The little the harness needs from the OS: a clock shared by processes, CPU accounting of the
//! harness and of the broker, file limits.

use std::fs;
use std::io;

use serde::{Deserialize, Serialize};

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every worker process, so a timestamp
/// written by a publisher in one process can be compared with a receive time in another.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec and CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until `deadline_ns` on [`mono_ns`].
pub fn sleep_until(deadline_ns: u64) {
    let now = mono_ns();
    if deadline_ns > now {
        std::thread::sleep(std::time::Duration::from_nanos(deadline_ns - now));
    }
}

/// User plus system CPU seconds this process has used (all threads).
pub fn self_cpu_s() -> f64 {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// One look at another process (the broker) through /proc.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcSample {
    /// utime + stime in seconds.
    pub cpu_s: f64,
    /// Resident set (VmRSS), KiB.
    pub rss_kb: u64,
    /// Peak resident set (VmHWM), KiB.
    pub hwm_kb: u64,
    /// Voluntary context switches, summed over the process's threads.
    #[serde(default)]
    pub ctx_voluntary: u64,
    /// Involuntary (preempted) context switches, summed over the process's threads.
    #[serde(default)]
    pub ctx_involuntary: u64,
    /// read-family plus write-family system calls (`syscr` + `syscw` of /proc/<pid>/io; the
    /// kernel counts read/readv/pread and write/writev/pwrite/sendfile there, not
    /// recv/send/epoll/io_uring), when readable.
    #[serde(default)]
    pub rw_syscalls: Option<u64>,
}

/// Reads /proc/<pid>/stat and /proc/<pid>/status.
pub fn sample_process(pid: u32) -> io::Result<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let ticks = parse_stat_cpu_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc stat"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (mut ctx_voluntary, mut ctx_involuntary) = (0, 0);
    let mut threads = 0;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            // A thread may exit between the listing and the read: skip it.
            let Ok(text) = fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            threads += 1;
            ctx_voluntary += parse_status_count(&text, "voluntary_ctxt_switches:").unwrap_or(0);
            ctx_involuntary +=
                parse_status_count(&text, "nonvoluntary_ctxt_switches:").unwrap_or(0);
        }
    }
    if threads == 0 {
        ctx_voluntary = parse_status_count(&status, "voluntary_ctxt_switches:").unwrap_or(0);
        ctx_involuntary = parse_status_count(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0);
    }
    let rw_syscalls = fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            Some(parse_status_count(&io, "syscr:")? + parse_status_count(&io, "syscw:")?)
        });
    Ok(ProcSample {
        cpu_s: ticks as f64 / hz,
        rss_kb: parse_status_kb(&status, "VmRSS:").unwrap_or(0),
        hwm_kb: parse_status_kb(&status, "VmHWM:").unwrap_or(0),
        ctx_voluntary,
        ctx_involuntary,
        rw_syscalls,
    })
}

/// utime + stime (fields 14 and 15) in clock ticks from a /proc/<pid>/stat line. The command
/// name (field 2) may contain spaces and parentheses, so fields are counted after the last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   123 kB` line of /proc/<pid>/status.
pub fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|line| line.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A `key: 123` line of /proc/<pid>/status or /proc/<pid>/io.
pub fn parse_status_count(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|line| line.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: zeroed rlimit is a valid out-parameter; get/setrlimit with valid pointers.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return wanted.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// The machine's host name.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// CPUs this process may run on (respects taskset / cgroup affinity).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Seconds since the Unix epoch.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_name() {
        let stat = "1234 (my (odd) broker) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 \
                    1 0 100 1000000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn status_lines() {
        let status = "Name:\tmosquitto\nVmHWM:\t    9000 kB\nVmRSS:\t    8123 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS:"), Some(8123));
        assert_eq!(parse_status_kb(status, "VmHWM:"), Some(9000));
        assert_eq!(parse_status_kb(status, "VmSwap:"), None);
        let status = "voluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(
            parse_status_count(status, "voluntary_ctxt_switches:"),
            Some(12)
        );
        assert_eq!(
            parse_status_count(status, "nonvoluntary_ctxt_switches:"),
            Some(3)
        );
        let io = "rchar: 10\nwchar: 20\nsyscr: 7\nsyscw: 9\n";
        assert_eq!(parse_status_count(io, "syscr:"), Some(7));
    }

    #[test]
    fn sample_self() {
        let sample = sample_process(std::process::id()).unwrap();
        assert!(sample.rss_kb > 0);
        assert!(sample.ctx_voluntary + sample.ctx_involuntary > 0);
        assert!(sample.rw_syscalls.is_some());
        assert!(mono_ns() > 0);
        assert!(self_cpu_s() >= 0.0);
    }
}
