//! The standard Prometheus process metrics (`process_*`), read from `/proc/self`
//! at each scrape and written in the exposition format. Parsing and rendering are pure.

use std::fmt::Write;

/// One reading of the process's resources.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: u64,
    /// Start time, Unix seconds.
    pub start_time: f64,
    /// Open file descriptors.
    pub open_fds: u64,
}

/// Parses `/proc/self/stat`, given the boot time (`btime` of `/proc/stat`), clock
/// ticks per second and the page size; None when the text is not a stat line.
pub fn parse_stat(stat: &str, boot_time: u64, ticks: u64, page: u64) -> Option<(f64, u64, f64)> {
    // The command name is in parentheses and may hold spaces or ')': split after the last one.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 of proc(5) (`state`) is fields[0]: utime is 14, stime 15, starttime 22, rss 24.
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let ticks = ticks.max(1) as f64;
    let cpu = (num(11)? + num(12)?) as f64 / ticks;
    let start = boot_time as f64 + num(19)? as f64 / ticks;
    let rss = num(21)?.saturating_mul(page);
    Some((cpu, rss, start))
}

/// The boot time from the text of `/proc/stat`.
pub fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads the process's stats; None where `/proc` is not available.
pub fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = parse_boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    // SAFETY: sysconf has no memory effects.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let (cpu_seconds, resident_bytes, start_time) = parse_stat(
        &stat,
        boot,
        u64::try_from(ticks).ok()?,
        u64::try_from(page).ok()?,
    )?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(ProcessStats {
        cpu_seconds,
        resident_bytes,
        start_time,
        open_fds,
    })
}

/// The stats in the Prometheus text format, with HELP and TYPE lines.
pub fn render(s: &ProcessStats) -> String {
    let mut out = String::new();
    for (name, kind, help, value) in [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            s.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            s.resident_bytes as f64,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            s.start_time,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            s.open_fds as f64,
        ),
    ] {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        // A command name with a space and a parenthesis, as a process may choose.
        let line = "4242 (tls relay) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 12000 300000000 2048 18446744073709551615";
        assert_eq!(
            parse_stat(line, 1_700_000_000, 100, 4096),
            Some((3.0, 2048 * 4096, 1_700_000_120.0))
        );
        for bad in [
            "",
            "4242 (x) S 1",
            "no parenthesis 1 2 3",
            "1 (x) S 1 2 3 4 5 6 7 8 9 x 50 0 0 0 0 0 0 1 2 3",
        ] {
            assert_eq!(parse_stat(bad, 0, 100, 4096), None, "{bad}");
        }
        assert_eq!(
            parse_boot_time("cpu 1 2\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_boot_time("cpu 1 2\n"), None);
    }

    #[test]
    fn rendering() {
        let text = render(&ProcessStats {
            cpu_seconds: 1.5,
            resident_bytes: 4096,
            start_time: 1_700_000_000.25,
            open_fds: 7,
        });
        assert!(
            text.contains(
                "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\nprocess_resident_memory_bytes 4096\n"),
            "{text}"
        );
        assert!(
            text.contains("\nprocess_start_time_seconds 1700000000.25\n"),
            "{text}"
        );
        assert!(text.contains("\nprocess_open_fds 7\n"), "{text}");
    }

    #[test]
    fn reads_this_process() {
        let s = read().expect("/proc is mounted where the tests run");
        assert!(
            s.resident_bytes > 0 && s.open_fds > 0 && s.start_time > 1.0e9,
            "{s:?}"
        );
    }
}
