//! Admission control near the memory cap: decides whether a new WebSocket (or
//! a new room, which the server asks about the same way) may be accepted,
//! given our resident memory and the limit we run under.
//!
//! The limit is our cgroup's memory limit (v2 `memory.max`, or v1
//! `memory.limit_in_bytes` on hybrid hosts; the tightest one on the path up
//! to the mount root, since a parent's limit binds us too), or
//! `MEMORY_LIMIT_BYTES` when set (`0` turns the guard off). Above the high-water
//! mark (90 % of the limit) new upgrades are refused (the server answers 503),
//! and they are admitted again only once RSS falls below the low-water mark
//! (80 %): the gap keeps a server hovering at the threshold from flapping.
//! Existing connections are never touched; they are what we protect.
//!
//! RSS comes from `/proc/self/statm`, read at most every 100 ms so that a join
//! storm costs one small read per tick instead of one per upgrade. The
//! decision itself ([`Admission`]) is pure: it sees (rss, limit, now) only, so
//! the hysteresis is tested without `/proc`.
//!
//! RSS is a proxy: the cgroup also charges page cache and kernel socket
//! buffers to us, which is why high water sits well below the limit. And the
//! allocator keeps freed memory mapped, which would keep RSS (and the guard)
//! up after a burst has passed: before refusing, the guard asks glibc to
//! return free pages (`malloc_trim`, at most once a second) and looks again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Fraction of the limit (in percent) above which new WebSockets are refused.
pub const HIGH_WATER_PERCENT: u64 = 90;
/// Fraction of the limit (in percent) below which they are admitted again.
pub const LOW_WATER_PERCENT: u64 = 80;
/// Minimum time between two RSS samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// A change of admission state, returned so the caller (and tests) can see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// RSS crossed high water: new WebSockets are now refused.
    Engaged,
    /// RSS fell below low water: new WebSockets are admitted again.
    Lifted,
}

/// The pure decision: thresholds, current state and the sampling clock.
#[derive(Debug, Clone)]
pub struct Admission {
    limit: u64,
    high: u64,
    low: u64,
    engaged: bool,
    last_sample: Option<Instant>,
    last_rss: u64,
}

impl Admission {
    /// Thresholds derived from `limit` bytes (must be non-zero).
    pub fn new(limit: u64) -> Admission {
        let limit = limit.max(1);
        Admission {
            limit,
            // u128 so that a limit near u64::MAX cannot overflow.
            high: (limit as u128 * HIGH_WATER_PERCENT as u128 / 100) as u64,
            low: (limit as u128 * LOW_WATER_PERCENT as u128 / 100) as u64,
            engaged: false,
            last_sample: None,
            last_rss: 0,
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
    pub fn high_water(&self) -> u64 {
        self.high
    }
    pub fn low_water(&self) -> u64 {
        self.low
    }
    /// True while new WebSockets are being refused.
    pub fn engaged(&self) -> bool {
        self.engaged
    }
    /// RSS of the latest sample, in bytes (0 before the first one).
    pub fn last_rss(&self) -> u64 {
        self.last_rss
    }

    /// Whether a sample of `rss` would leave new WebSockets refused (engage,
    /// or stay engaged) given the current state.
    pub fn would_refuse(&self, rss: u64) -> bool {
        if self.engaged {
            rss >= self.low
        } else {
            rss >= self.high
        }
    }

    /// Whether a sample is due at `now`.
    pub fn sample_due(&self, now: Instant) -> bool {
        match self.last_sample {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= SAMPLE_INTERVAL,
        }
    }

    /// Feeds one RSS sample taken at `now` and applies the hysteresis.
    pub fn observe(&mut self, rss: u64, now: Instant) -> Option<Transition> {
        self.last_sample = Some(now);
        self.last_rss = rss;
        if !self.engaged && rss >= self.high {
            self.engaged = true;
            Some(Transition::Engaged)
        } else if self.engaged && rss < self.low {
            self.engaged = false;
            Some(Transition::Lifted)
        } else {
            None
        }
    }

    /// The whole decision for one upgrade: samples through `read_rss` only
    /// when due (a failed read keeps the previous state), then answers
    /// whether the upgrade may proceed, plus any state change it caused.
    pub fn decide(
        &mut self,
        now: Instant,
        read_rss: impl FnOnce() -> Option<u64>,
    ) -> (bool, Option<Transition>) {
        let mut transition = None;
        if self.sample_due(now) {
            match read_rss() {
                Some(rss) => transition = self.observe(rss, now),
                // Do not retry on every upgrade if /proc is unreadable.
                None => self.last_sample = Some(now),
            }
        }
        (!self.engaged, transition)
    }
}

/// Admission control for the server: [`Admission`] plus where the limit and
/// RSS come from. Without a limit it admits everything and reads nothing.
#[derive(Debug, Clone)]
pub struct MemGuard {
    admission: Option<Admission>,
    last_trim: Option<Instant>,
}

impl MemGuard {
    /// Limit from `MEMORY_LIMIT_BYTES` if set, else from our cgroup v2
    /// `memory.max`; no limit found means no admission control.
    pub fn from_system() -> MemGuard {
        let limit = match std::env::var("MEMORY_LIMIT_BYTES") {
            Ok(v) => match parse_limit_override(&v) {
                Ok(l) => {
                    log::info!("memory guard: limit from MEMORY_LIMIT_BYTES: {l:?}");
                    l
                }
                Err(e) => {
                    log::warn!("memory guard: {e}; using the cgroup limit instead");
                    cgroup_limit()
                }
            },
            Err(_) => cgroup_limit(),
        };
        let guard = MemGuard::with_limit(limit);
        match &guard.admission {
            Some(a) => log::info!(
                "memory guard: limit {} bytes, refusing new WebSockets and rooms above {} and resuming below {}",
                a.limit(),
                a.high_water(),
                a.low_water()
            ),
            None => log::info!("memory guard: no memory limit found, admission control off"),
        }
        guard
    }

    /// A guard for an explicit limit (`None` or `Some(0)`: off).
    pub fn with_limit(limit: Option<u64>) -> MemGuard {
        MemGuard {
            admission: limit.filter(|&l| l > 0).map(Admission::new),
            last_trim: None,
        }
    }

    /// The limit in force, if any.
    pub fn limit(&self) -> Option<u64> {
        self.admission.as_ref().map(Admission::limit)
    }

    /// True while new WebSockets are being refused.
    pub fn engaged(&self) -> bool {
        self.admission.as_ref().is_some_and(Admission::engaged)
    }

    /// Call on each WebSocket upgrade request; `false` means answer 503.
    pub fn allow_new_websocket(&mut self, now: Instant) -> bool {
        self.allow_with(now, own_rss_bytes, release_free_memory)
    }

    /// Whether memory may grow by `bytes` now (a message being received, a
    /// document about to be stored): the guard is not engaged, and RSS plus
    /// `bytes` stays under high water. The projection matters because a
    /// 16 MiB message arrives over loopback faster than [`SAMPLE_INTERVAL`];
    /// for the same reason a growth of [`FRESH_SAMPLE_BYTES`] or more reads
    /// RSS afresh. Before refusing, free heap the allocator kept is handed
    /// back (at most once per [`TRIM_INTERVAL`]) and RSS read again.
    pub fn allow_growth(&mut self, now: Instant, bytes: usize) -> bool {
        self.allow_growth_with(now, bytes, own_rss_bytes, release_free_memory)
    }

    fn allow_growth_with<F: FnOnce()>(
        &mut self,
        now: Instant,
        bytes: usize,
        mut read_rss: impl FnMut() -> Option<u64>,
        trim: F,
    ) -> bool {
        let mut trim = Some(trim);
        let once = |t: &mut Option<_>| {
            if let Some(f) = Option::take(t) {
                let f: F = f;
                f()
            }
        };
        if !self.allow_with(now, &mut read_rss, || once(&mut trim)) {
            return false;
        }
        let trim_due = self
            .last_trim
            .map_or(true, |t| now.saturating_duration_since(t) >= TRIM_INTERVAL);
        let Some(adm) = self.admission.as_mut() else {
            return true;
        };
        let fits = |rss: u64, adm: &Admission| rss.saturating_add(bytes as u64) < adm.high_water();
        let mut rss = adm.last_rss();
        if bytes >= FRESH_SAMPLE_BYTES {
            if let Some(r) = read_rss() {
                rss = r;
            }
        }
        if fits(rss, adm) {
            return true;
        }
        if !trim_due || trim.is_none() {
            return false;
        }
        once(&mut trim);
        self.last_trim = Some(now);
        read_rss().is_some_and(|r| fits(r, adm))
    }

    /// [`Self::allow_new_websocket`] with the RSS source supplied by the
    /// caller (and no allocator trimming); logs each transition once.
    pub fn allow_new_websocket_with(
        &mut self,
        now: Instant,
        read_rss: impl FnOnce() -> Option<u64>,
    ) -> bool {
        let mut read_rss = Some(read_rss);
        self.allow_with(now, || read_rss.take().and_then(|f| f()), || {})
    }

    /// The decision with both effects injected. RSS alone would overstate
    /// our use: the allocator keeps freed memory mapped, so after a burst
    /// (a big document, a wave of connections that then left) RSS can stay
    /// above low water while the heap is mostly free, and the guard would
    /// refuse new WebSockets for good. So when a sample says "refuse", the
    /// allocator is first asked to hand free memory back (at most once per
    /// [`TRIM_INTERVAL`]) and RSS is read again.
    fn allow_with(
        &mut self,
        now: Instant,
        mut read_rss: impl FnMut() -> Option<u64>,
        trim: impl FnOnce(),
    ) -> bool {
        let Some(adm) = self.admission.as_mut() else {
            return true;
        };
        let trim_due = self
            .last_trim
            .map_or(true, |t| now.saturating_duration_since(t) >= TRIM_INTERVAL);
        let judge = adm.clone();
        let mut trimmed = false;
        let (allow, transition) = adm.decide(now, || {
            let rss = read_rss()?;
            if trim_due && judge.would_refuse(rss) {
                trim();
                trimmed = true;
                return read_rss().or(Some(rss));
            }
            Some(rss)
        });
        match transition {
            Some(Transition::Engaged) => log::warn!(
                "memory guard engaged: RSS {} bytes >= {} (limit {}); refusing new WebSockets and rooms with 503",
                adm.last_rss(),
                adm.high_water(),
                adm.limit()
            ),
            Some(Transition::Lifted) => log::info!(
                "memory guard lifted: RSS {} bytes < {}; accepting new WebSockets again",
                adm.last_rss(),
                adm.low_water()
            ),
            None => {}
        }
        if trimmed {
            self.last_trim = Some(now);
        }
        allow
    }
}

/// A growth at least this large reads RSS afresh instead of trusting a
/// sample up to [`SAMPLE_INTERVAL`] old.
pub const FRESH_SAMPLE_BYTES: usize = 1 << 20;

/// Minimum time between two allocator trims: a trim walks the heap, so it
/// must not run on every refused upgrade of a join storm.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Returns free heap memory to the kernel so that RSS reflects live data.
/// glibc keeps freed chunks mapped; `malloc_trim(0)` releases them (whole
/// free pages anywhere in each arena, not just at the top). Other allocators
/// have nothing to do here.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only inspects and madvises the allocator's own
    // free lists; it is thread-safe and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Freed heap memory the allocator still holds (glibc's `fordblks`, all
/// arenas); 0 where that cannot be known.
pub fn free_heap_bytes() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallinfo2 only reads the allocator's counters.
    unsafe {
        libc::mallinfo2().fordblks
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    0
}

/// `MEMORY_LIMIT_BYTES`: a byte count; `0` disables the guard.
fn parse_limit_override(v: &str) -> Result<Option<u64>, String> {
    match v.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(format!("MEMORY_LIMIT_BYTES={v:?} is not a byte count")),
    }
}

/// Our resident set size in bytes, from `/proc/self/statm`.
pub fn own_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages = parse_statm_resident(&statm)?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = if page > 0 { page as u64 } else { 4096 };
    Some(pages.saturating_mul(page))
}

/// Second field of statm: resident pages.
fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// Tightest memory limit of our cgroup and its ancestors: cgroup v2
/// `memory.max`, or on v1/hybrid hosts the memory controller's
/// `memory.limit_in_bytes`. The mounts are found through
/// `/proc/self/mountinfo`, so non-standard mount points and cgroup namespaces
/// (a container seeing its own cgroup as `/`) are handled.
pub fn cgroup_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup_dirs(&cgroup, &mountinfo)
        .into_iter()
        .filter_map(|d| limit_along(&d))
        .min()
}

/// Which kind of cgroup hierarchy a directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hierarchy {
    V2,
    V1Memory,
}

/// A cgroup directory to read, and the mount root we must not climb above.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupDir {
    kind: Hierarchy,
    mount_point: PathBuf,
    dir: PathBuf,
}

/// Our v2 and v1-memory cgroup directories, from `/proc/self/cgroup` and
/// `/proc/self/mountinfo`.
fn cgroup_dirs(cgroup: &str, mountinfo: &str) -> Vec<CgroupDir> {
    let mut v2_path = None;
    let mut v1_path = None;
    for line in cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            v2_path = Some(path.trim().to_string());
        } else if ctrls.split(',').any(|c| c == "memory") {
            v1_path = Some(path.trim().to_string());
        }
    }
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // id parent maj:min root mount-point options [optional...] - fstype source super-options
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let (root, mount_point) = (unescape_mount(pre[3]), unescape_mount(pre[4]));
        let (kind, path) = match post[0] {
            "cgroup2" => (Hierarchy::V2, v2_path.as_deref()),
            "cgroup" if post[2].split(',').any(|o| o == "memory") => {
                (Hierarchy::V1Memory, v1_path.as_deref())
            }
            _ => continue,
        };
        let Some(path) = path else { continue };
        // Our path relative to what is mounted; if it lies outside the mount
        // root (a namespace we cannot see through), the mount root is the
        // best we have.
        let rel = Path::new(path)
            .strip_prefix(&root)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mount_point = PathBuf::from(mount_point);
        out.push(CgroupDir {
            kind,
            dir: mount_point.join(rel),
            mount_point,
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The tightest limit from `d.dir` up to its mount point.
fn limit_along(d: &CgroupDir) -> Option<u64> {
    let file = match d.kind {
        Hierarchy::V2 => "memory.max",
        Hierarchy::V1Memory => "memory.limit_in_bytes",
    };
    let mut best: Option<u64> = None;
    let mut dir = Some(d.dir.as_path());
    while let Some(cur) = dir {
        if let Ok(s) = std::fs::read_to_string(cur.join(file)) {
            let v = match d.kind {
                Hierarchy::V2 => parse_memory_max(&s),
                Hierarchy::V1Memory => parse_v1_limit(&s),
            };
            if let Some(v) = v {
                best = Some(best.map_or(v, |b| b.min(v)));
            }
        }
        if cur == d.mount_point {
            break;
        }
        dir = cur.parent();
    }
    best
}

/// `memory.max` holds a byte count or `max` (no limit).
fn parse_memory_max(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "max" {
        None
    } else {
        s.parse().ok()
    }
}

/// v1 has no "max": "unlimited" is a page-rounded i64::MAX. Anything beyond
/// an exabyte is treated as no limit.
fn parse_v1_limit(s: &str) -> Option<u64> {
    s.trim().parse::<u64>().ok().filter(|&v| v < 1 << 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    #[test]
    fn growth_is_judged_by_the_projection() {
        // This process is far below a 1 TiB limit, but not 2 TiB below it.
        let mut g = MemGuard::with_limit(Some(1 << 40));
        let now = Instant::now();
        assert!(g.allow_growth(now, 0));
        assert!(g.allow_growth(now, 16 << 20));
        assert!(!g.allow_growth(now, 1 << 41));
        assert!(
            !g.engaged(),
            "a refused projection does not engage the guard"
        );
        assert!(MemGuard::with_limit(None).allow_growth(now, usize::MAX));
        // A large growth reads RSS afresh, and trims before it refuses.
        let mut g = MemGuard::with_limit(Some(100 << 20));
        let rss = std::cell::Cell::new(10u64 << 20);
        assert!(g.allow_growth_with(now, 1 << 20, || Some(rss.get()), || {}));
        rss.set(80 << 20); // the stale sample still says 10 MiB
        assert!(!g.allow_growth_with(now, 16 << 20, || Some(rss.get()), || {}));
        let mut g = MemGuard::with_limit(Some(100 << 20));
        rss.set(80 << 20);
        let trimmed = std::cell::Cell::new(false);
        let read = || Some(if trimmed.get() { 40 << 20 } else { rss.get() });
        assert!(g.allow_growth_with(now, 16 << 20, read, || trimmed.set(true)));
    }

    #[test]
    fn hysteresis_engages_high_and_lifts_low() {
        let mut a = Admission::new(100 * MB);
        assert_eq!((a.high_water(), a.low_water()), (90 * MB, 80 * MB));
        let t0 = Instant::now();
        assert_eq!(a.observe(50 * MB, t0), None);
        assert!(!a.engaged());
        assert_eq!(a.observe(89 * MB, t0), None);
        assert_eq!(a.observe(90 * MB, t0), Some(Transition::Engaged));
        assert!(a.engaged());
        // Still refusing between the marks, and no repeated transition.
        assert_eq!(a.observe(95 * MB, t0), None);
        assert_eq!(a.observe(85 * MB, t0), None);
        assert_eq!(a.observe(80 * MB, t0), None);
        assert!(a.engaged());
        assert_eq!(a.observe(80 * MB - 1, t0), Some(Transition::Lifted));
        assert!(!a.engaged());
        // Between the marks from below: stays admitting.
        assert_eq!(a.observe(85 * MB, t0), None);
        assert!(!a.engaged());
    }

    #[test]
    fn samples_at_most_every_interval() {
        let mut a = Admission::new(100 * MB);
        let t0 = Instant::now();
        let mut reads = 0;
        let mut read = |v| {
            reads += 1;
            Some(v)
        };
        assert_eq!(
            a.decide(t0, || read(95 * MB)),
            (false, Some(Transition::Engaged))
        );
        // Within 100 ms the cached decision holds, without reading.
        let (allow, tr) = a.decide(t0 + Duration::from_millis(99), || panic!("no read due"));
        assert_eq!((allow, tr), (false, None));
        assert_eq!(
            a.decide(t0 + Duration::from_millis(100), || read(10 * MB)),
            (true, Some(Transition::Lifted))
        );
        assert_eq!(reads, 2);
        // A failed read keeps the state and still waits the interval.
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(a.decide(t1, || None), (true, None));
        let (allow, _) = a.decide(t1 + Duration::from_millis(50), || panic!("no read due"));
        assert!(allow);
    }

    #[test]
    fn guard_without_limit_admits_everything_without_reading() {
        let mut g = MemGuard::with_limit(None);
        assert!(g.allow_new_websocket_with(Instant::now(), || panic!("must not read")));
        let mut g = MemGuard::with_limit(Some(0));
        assert_eq!(g.limit(), None);
        assert!(g.allow_new_websocket_with(Instant::now(), || panic!("must not read")));
    }

    #[test]
    fn guard_refuses_and_resumes() {
        let mut g = MemGuard::with_limit(Some(100 * MB));
        let t0 = Instant::now();
        assert!(g.allow_new_websocket_with(t0, || Some(60 * MB)));
        let t1 = t0 + SAMPLE_INTERVAL;
        assert!(!g.allow_new_websocket_with(t1, || Some(92 * MB)));
        assert!(g.engaged());
        let t2 = t1 + SAMPLE_INTERVAL;
        assert!(!g.allow_new_websocket_with(t2, || Some(82 * MB)));
        let t3 = t2 + SAMPLE_INTERVAL;
        assert!(g.allow_new_websocket_with(t3, || Some(70 * MB)));
        assert!(!g.engaged());
    }

    #[test]
    fn trims_before_refusing_and_not_too_often() {
        let mut g = MemGuard::with_limit(Some(100 * MB));
        let t0 = Instant::now();
        // High RSS that a trim brings down: admitted, never engaged.
        let mut reads = vec![50 * MB, 95 * MB];
        let mut trims = 0;
        assert!(g.allow_with(t0, || reads.pop(), || trims += 1));
        assert_eq!(trims, 1);
        assert!(!g.engaged());
        // Still high 100 ms later: the trim is not due yet, so it engages.
        let t1 = t0 + SAMPLE_INTERVAL;
        let mut reads = vec![95 * MB];
        assert!(!g.allow_with(t1, || reads.pop(), || trims += 1));
        assert_eq!(trims, 1);
        assert!(g.engaged());
        // Engaged, between the marks: a due trim frees enough to lift.
        let t2 = t0 + TRIM_INTERVAL;
        let mut reads = vec![60 * MB, 85 * MB];
        assert!(g.allow_with(t2, || reads.pop(), || trims += 1));
        assert_eq!(trims, 2);
        assert!(!g.engaged());
        // Low RSS: no trim at all.
        let t3 = t2 + TRIM_INTERVAL;
        assert!(g.allow_with(t3, || Some(10 * MB), || trims += 1));
        assert_eq!(trims, 2);
    }

    #[test]
    fn would_refuse_follows_the_state() {
        let mut a = Admission::new(100 * MB);
        assert!(!a.would_refuse(85 * MB));
        assert!(a.would_refuse(90 * MB));
        a.observe(95 * MB, Instant::now());
        assert!(a.would_refuse(85 * MB));
        assert!(!a.would_refuse(79 * MB));
    }

    #[test]
    fn real_rss_is_readable_and_plausible() {
        let rss = own_rss_bytes().expect("/proc/self/statm readable on Linux");
        assert!(rss > 100_000 && rss < 10_000_000_000, "rss {rss}");
        let mut g = MemGuard::with_limit(Some(u64::MAX));
        assert!(g.allow_new_websocket(Instant::now()));
        // A guard that refuses on anything exercises the real trim path.
        let mut g = MemGuard::with_limit(Some(1));
        assert!(!g.allow_new_websocket(Instant::now()));
        assert!(g.engaged());
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_statm_resident("1000 250 30 1 0 200 0\n"), Some(250));
        assert_eq!(parse_statm_resident(""), None);
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("104857600\n"), Some(104_857_600));
        assert_eq!(parse_v1_limit("9223372036854771712\n"), None);
        assert_eq!(parse_v1_limit("104857600\n"), Some(104_857_600));
        assert_eq!(parse_limit_override("0"), Ok(None));
        assert_eq!(parse_limit_override(" 104857600 "), Ok(Some(104_857_600)));
        assert!(parse_limit_override("100M").is_err());
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
    }

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_v1_and_v2_directories() {
        let cg = "4:memory:/sandbox/abc\n1:cpu:/\n0::/user.slice\n";
        let dirs = cgroup_dirs(cg, MOUNTINFO);
        assert_eq!(
            dirs,
            vec![
                CgroupDir {
                    kind: Hierarchy::V1Memory,
                    mount_point: "/sys/fs/cgroup/memory".into(),
                    dir: "/sys/fs/cgroup/memory/sandbox/abc".into(),
                },
                CgroupDir {
                    kind: Hierarchy::V2,
                    mount_point: "/sys/fs/cgroup/unified".into(),
                    dir: "/sys/fs/cgroup/unified/user.slice".into(),
                },
            ]
        );
        // Pure v2 host; a container whose mount root is its own cgroup.
        let mi = "30 1 0:26 /docker/xyz /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        let dirs = cgroup_dirs("0::/docker/xyz\n", mi);
        assert_eq!(dirs[0].dir, PathBuf::from("/sys/fs/cgroup"));
        // Path outside the mount root: fall back to the mount point.
        let dirs = cgroup_dirs("0::/elsewhere\n", mi);
        assert_eq!(dirs[0].dir, PathBuf::from("/sys/fs/cgroup"));
        // No cgroup mounts at all.
        assert!(cgroup_dirs("0::/\n", "1 0 0:1 / / rw - ext4 /dev/x rw\n").is_empty());
    }

    #[test]
    fn tightest_limit_on_the_path_wins() {
        let root = std::env::temp_dir().join(format!("sync-memguard-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let leaf = root.join("system.slice/app.service");
        std::fs::create_dir_all(&leaf).unwrap();
        // Above the mount point: must not be read.
        std::fs::write(root.parent().unwrap().join("memory.max"), "1\n").ok();
        std::fs::write(root.join("system.slice/memory.max"), "209715200\n").unwrap();
        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        let d = CgroupDir {
            kind: Hierarchy::V2,
            mount_point: root.clone(),
            dir: leaf.clone(),
        };
        assert_eq!(limit_along(&d), Some(209_715_200));
        std::fs::write(leaf.join("memory.max"), "104857600\n").unwrap();
        assert_eq!(limit_along(&d), Some(104_857_600));
        let v1 = CgroupDir {
            kind: Hierarchy::V1Memory,
            mount_point: root.clone(),
            dir: leaf.clone(),
        };
        std::fs::write(leaf.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        assert_eq!(limit_along(&v1), None);
        std::fs::write(leaf.join("memory.limit_in_bytes"), "52428800\n").unwrap();
        assert_eq!(limit_along(&v1), Some(52_428_800));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn reads_this_machine_without_failing() {
        // Whatever the host, this must not panic; a limit, if any, is > 0.
        if let Some(l) = cgroup_limit() {
            assert!(l > 0);
        }
    }
}
