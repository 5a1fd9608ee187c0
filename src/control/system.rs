//! What the device itself says about its load and power: CPU utilisation from `/proc/stat` and
//! the battery from `/sys/class/power_supply`. Read every `control.interval_ms`, not per frame.
//! The parsers are plain functions over text, tested without the files; the readers only open
//! files, so tests point them at a made-up tree.

use std::path::{Path, PathBuf};

/// Jiffies a set of CPUs spent, from `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// Sums the `cpuN` lines of `stat` for the CPUs in `cpus`, or takes the `cpu` line (all of them)
/// when `cpus` is `None`. Idle and iowait count as idle; guest time is already inside user time.
pub fn parse_proc_stat(stat: &str, cpus: Option<&[usize]>) -> Option<CpuTimes> {
    let mut sum = CpuTimes::default();
    let mut found = false;
    for line in stat.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(name) = fields.next() else { continue };
        let Some(id) = name.strip_prefix("cpu") else { continue };
        let wanted = match cpus {
            None => id.is_empty(),
            Some(set) => id.parse::<usize>().is_ok_and(|n| set.contains(&n)),
        };
        if !wanted {
            continue;
        }
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        let values: Vec<u64> = fields.take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
        if values.len() < 4 {
            return None;
        }
        let idle = values[3] + values.get(4).copied().unwrap_or(0);
        let total: u64 = values.iter().sum();
        sum.total += total;
        sum.busy += total - idle;
        found = true;
    }
    found.then_some(sum)
}

/// CPUs this thread may run on (its affinity mask), so that a device limited to some cores
/// (a cgroup cpuset, `taskset`) measures those and not the whole machine.
pub fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect();
        (!cpus.is_empty()).then_some(cpus)
    }
}

/// Utilisation between consecutive reads of `/proc/stat`.
#[derive(Debug)]
pub struct CpuSampler {
    path: PathBuf,
    cpus: Option<Vec<usize>>,
    last: Option<CpuTimes>,
}

impl CpuSampler {
    pub fn new(path: impl Into<PathBuf>, cpus: Option<Vec<usize>>) -> Self {
        CpuSampler { path: path.into(), cpus, last: None }
    }

    /// Busy share of the CPUs since the previous call, 0..=1; `None` on the first call, when
    /// the file cannot be read (no `/proc`), or when no time passed.
    pub fn sample(&mut self) -> Option<f32> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let now = parse_proc_stat(&text, self.cpus.as_deref())?;
        let previous = self.last.replace(now)?;
        let total = now.total.checked_sub(previous.total)?;
        let busy = now.busy.checked_sub(previous.busy)?;
        (total > 0).then(|| (busy as f32 / total as f32).clamp(0.0, 1.0))
    }
}

/// The battery's charge and whether it is being drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Battery {
    /// Percent, 0..=100.
    pub level: u8,
    /// True unless the battery says it is discharging (charging, full, not charging: on mains).
    pub on_mains: bool,
}

/// Reads the batteries under `root` (`/sys/class/power_supply`): every entry whose `type` is
/// `Battery` (or that has a `capacity` and no `type`). Several batteries: the lowest level, and
/// discharging if any is. `None` when there is none: a device on mains.
pub fn read_battery(root: &Path) -> Option<Battery> {
    let mut found: Option<Battery> = None;
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let dir = entry.path();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok().map(|s| s.trim().to_string());
        if read("type").is_some_and(|t| t != "Battery") {
            continue;
        }
        let Some(level) = read("capacity").and_then(|c| c.parse::<u8>().ok()) else { continue };
        let on_mains = read("status").is_none_or(|s| !s.eq_ignore_ascii_case("discharging"));
        let battery = Battery { level: level.min(100), on_mains };
        found = Some(match found {
            None => battery,
            Some(other) => Battery { level: other.level.min(battery.level), on_mains: other.on_mains && battery.on_mains },
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 0 50 800 50 0 0 0 0 0\n\
                        cpu0 60 0 30 380 30 0 0 0 0 0\n\
                        cpu1 40 0 20 420 20 0 0 0 0 0\n\
                        intr 12345\nctxt 999\n";

    #[test]
    fn proc_stat_sums_the_chosen_cpus_and_counts_iowait_as_idle() {
        assert_eq!(parse_proc_stat(STAT, None), Some(CpuTimes { busy: 150, total: 1000 }));
        assert_eq!(parse_proc_stat(STAT, Some(&[0])), Some(CpuTimes { busy: 90, total: 500 }));
        assert_eq!(parse_proc_stat(STAT, Some(&[0, 1])), Some(CpuTimes { busy: 150, total: 1000 }));
        assert_eq!(parse_proc_stat(STAT, Some(&[7])), None);
        assert_eq!(parse_proc_stat("cpu x y\n", None), None);
        assert_eq!(parse_proc_stat("", None), None);
    }

    #[test]
    fn sampler_gives_utilisation_between_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stat");
        std::fs::write(&path, "cpu  100 0 0 900 0 0 0 0\n").unwrap();
        let mut sampler = CpuSampler::new(&path, None);
        assert_eq!(sampler.sample(), None, "the first read only sets the baseline");
        std::fs::write(&path, "cpu  175 0 0 925 0 0 0 0\n").unwrap();
        assert_eq!(sampler.sample(), Some(0.75));
        assert_eq!(sampler.sample(), None, "no time passed");
        assert_eq!(CpuSampler::new(dir.path().join("absent"), None).sample(), None);
    }

    #[test]
    fn the_real_proc_stat_reads() {
        let mut sampler = CpuSampler::new("/proc/stat", allowed_cpus());
        sampler.sample();
        // Burn a little CPU so that time passes on the counters.
        let until = std::time::Instant::now() + std::time::Duration::from_millis(50);
        while std::time::Instant::now() < until {
            std::hint::black_box(0u64);
        }
        let utilisation = sampler.sample().expect("utilisation from /proc/stat");
        assert!((0.0..=1.0).contains(&utilisation));
        assert!(allowed_cpus().is_some_and(|cpus| !cpus.is_empty()));
    }

    fn supply(root: &Path, name: &str, files: &[(&str, &str)]) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in files {
            std::fs::write(dir.join(file), format!("{text}\n")).unwrap();
        }
    }

    #[test]
    fn batteries_are_read_from_a_power_supply_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(read_battery(root), None, "an empty tree: on mains");
        assert_eq!(read_battery(&root.join("absent")), None);
        supply(root, "AC", &[("type", "Mains"), ("online", "1")]);
        assert_eq!(read_battery(root), None, "a mains adapter is not a battery");
        supply(root, "BAT0", &[("type", "Battery"), ("capacity", "15"), ("status", "Discharging")]);
        assert_eq!(read_battery(root), Some(Battery { level: 15, on_mains: false }));
        supply(root, "BAT0", &[("status", "Charging")]);
        assert_eq!(read_battery(root), Some(Battery { level: 15, on_mains: true }));
        supply(root, "BAT1", &[("capacity", "80"), ("status", "Discharging")]);
        assert_eq!(read_battery(root), Some(Battery { level: 15, on_mains: false }), "lowest level, draining if any drains");
    }
}
