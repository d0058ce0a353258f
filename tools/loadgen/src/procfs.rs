//! Reads a process's memory and CPU time from `/proc`.
//!
//! `VmRSS`/`VmHWM` come from `/proc/<pid>/status` (kB). CPU time is
//! `utime + stime` from `/proc/<pid>/stat`, summed over all threads of the
//! process by the kernel, in clock ticks (usually 10 ms). The figures we
//! derive from it span seconds, so tick resolution costs well under 1%.

use std::fs;

/// Memory figures in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub rss: u64,
    pub hwm: u64,
}

/// Parses `VmRSS` and `VmHWM` out of the text of a `status` file.
pub fn parse_status(text: &str) -> Option<Mem> {
    let mut rss = None;
    let mut hwm = None;
    for line in text.lines() {
        let grab = |l: &str| -> Option<u64> {
            l.split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
                .map(|k| k * 1024)
        };
        if line.starts_with("VmRSS:") {
            rss = grab(line);
        } else if line.starts_with("VmHWM:") {
            hwm = grab(line);
        }
    }
    Some(Mem {
        rss: rss?,
        hwm: hwm?,
    })
}

/// `utime + stime` in ticks from the text of a `stat` file. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After ")" come field 3 (state) onwards; utime is field 14, stime 15.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The processes to watch (the server, or every node of a cluster, whose
/// figures are summed); none given: every read is `None`.
#[derive(Clone, Debug)]
pub struct Proc {
    pids: Vec<u32>,
}

impl Proc {
    pub fn new(pid: Option<u32>) -> Proc {
        Proc {
            pids: pid.into_iter().collect(),
        }
    }

    /// Several processes, summed.
    pub fn all(pids: Vec<u32>) -> Proc {
        Proc { pids }
    }

    /// The generator itself, to report its own CPU use.
    pub fn own() -> Proc {
        Proc::new(Some(std::process::id()))
    }

    pub fn is_set(&self) -> bool {
        !self.pids.is_empty()
    }

    /// Memory, summed over the processes.
    pub fn mem(&self) -> Option<Mem> {
        let mut total = Mem::default();
        for pid in self.pids_or_none()? {
            let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let m = parse_status(&text)?;
            total.rss += m.rss;
            total.hwm += m.hwm;
        }
        Some(total)
    }

    /// CPU seconds used so far (user + system), summed over the processes.
    pub fn cpu_secs(&self) -> Option<f64> {
        let mut ticks = 0;
        for pid in self.pids_or_none()? {
            let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            ticks += parse_stat_ticks(&text)?;
        }
        Some(ticks as f64 / ticks_per_sec())
    }

    fn pids_or_none(&self) -> Option<&[u32]> {
        (!self.pids.is_empty()).then_some(&self.pids[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let t =
            "Name:\tsync-server\nVmPeak:\t  9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        let m = parse_status(t).unwrap();
        assert_eq!(m.rss, 1024 * 1024);
        assert_eq!(m.hwm, 2048 * 1024);
        assert!(parse_status("Name: x\n").is_none());
    }

    #[test]
    fn parses_stat_with_odd_name() {
        let t = "42 (a) b (c)) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_ticks(t), Some(300));
    }

    #[test]
    fn reads_own_process() {
        let p = Proc::own();
        assert!(p.mem().unwrap().rss > 0);
        assert!(p.cpu_secs().is_some());
        assert!(Proc::new(None).mem().is_none());
    }
}
