//! CPU time and memory from `/proc` (Linux): who used the machine during a scenario, and how
//! much memory a process holds. On other systems every figure reads as absent.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

/// Clock ticks per second of `/proc/*/stat` times; 100 on every Linux this runs on.
const TICKS_PER_S: f64 = 100.0;

/// Cumulative CPU ticks at one instant.
#[derive(Clone, Debug)]
pub(crate) struct CpuSnapshot {
    at: Instant,
    machine_busy: u64,
    machine_total: u64,
    cpus: usize,
    /// Per process of interest: which kind, and its ticks so far.
    processes: HashMap<u32, (Kind, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bench,
    Postgres,
    Nats,
}

/// CPU used between two snapshots, in CPU-seconds, with the machine's busy share.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CpuUsage {
    pub(crate) wall_s: f64,
    pub(crate) cpus: usize,
    /// Busy share of all CPUs, 0–100.
    pub(crate) machine_busy_pct: f64,
    /// This benchmark's processes (the relay, producers, consumers, a relay child).
    pub(crate) bench_cpu_s: f64,
    /// Every `postgres` process (backends, WAL writer, checkpointer).
    pub(crate) postgres_cpu_s: f64,
    pub(crate) nats_cpu_s: f64,
    /// Busy time not accounted for by the above: other work on the machine (noise).
    pub(crate) other_cpu_s: f64,
}

impl CpuSnapshot {
    pub(crate) fn take() -> Self {
        let (machine_busy, machine_total, cpus) = machine_ticks().unwrap_or((0, 0, 1));
        let mut snapshot = CpuSnapshot {
            at: Instant::now(),
            machine_busy,
            machine_total,
            cpus,
            processes: HashMap::new(),
        };
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let Some((comm, ticks)) = process_ticks(&pid.to_string()) else {
                    continue;
                };
                let kind = match comm.as_str() {
                    "outbox-bench" => Kind::Bench,
                    "postgres" => Kind::Postgres,
                    "nats-server" => Kind::Nats,
                    _ => continue,
                };
                snapshot.processes.insert(pid, (kind, ticks));
            }
        }
        snapshot
    }

    /// Usage from `self` to `later`. A process counts with the ticks it used in between (all
    /// of them if it started in between); what a process used after `self` and before it ended
    /// is lost.
    pub(crate) fn until(&self, later: &CpuSnapshot) -> CpuUsage {
        let mut ticks = [0_u64; 3];
        for (pid, (kind, now)) in &later.processes {
            let before = match self.processes.get(pid) {
                Some((k, before)) if k == kind => *before,
                _ => 0,
            };
            ticks[*kind as usize] += now.saturating_sub(before);
        }
        let secs = |t: u64| t as f64 / TICKS_PER_S;
        let busy = later.machine_busy.saturating_sub(self.machine_busy) as f64;
        let total = later.machine_total.saturating_sub(self.machine_total) as f64;
        let (bench, postgres, nats) = (secs(ticks[0]), secs(ticks[1]), secs(ticks[2]));
        let busy_s = busy / TICKS_PER_S;
        CpuUsage {
            wall_s: later.at.duration_since(self.at).as_secs_f64(),
            cpus: later.cpus,
            machine_busy_pct: if total > 0.0 {
                100.0 * busy / total
            } else {
                0.0
            },
            bench_cpu_s: bench,
            postgres_cpu_s: postgres,
            nats_cpu_s: nats,
            other_cpu_s: (busy_s - bench - postgres - nats).max(0.0),
        }
    }
}

/// Busy and total ticks over all CPUs, and the CPU count, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64, usize)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut lines = stat.lines();
    let all: Vec<u64> = lines
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let cpus = lines.filter(|l| l.starts_with("cpu")).count().max(1);
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    let total: u64 = all.iter().take(8).sum();
    let idle = all.get(3).copied().unwrap_or(0) + all.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total, cpus))
}

/// A process's command name and its user + system ticks.
fn process_ticks(pid: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    // Fields after the command: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU-seconds (user + system) a process used so far.
pub(crate) fn process_cpu_s(pid: &str) -> Option<f64> {
    process_ticks(pid).map(|(_, ticks)| ticks as f64 / TICKS_PER_S)
}

/// Resident memory of a process from `/proc/<pid>/status`, in KiB: (current, peak).
pub(crate) fn rss_kib(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let (rss, peak) = rss_kib("self").expect("linux /proc");
        assert!(rss > 0 && peak >= rss);
        let ticks = process_ticks("self").expect("linux /proc");
        assert!(!ticks.0.is_empty());
        let a = CpuSnapshot::take();
        let b = CpuSnapshot::take();
        let usage = a.until(&b);
        assert!(usage.cpus >= 1);
        assert!((0.0..=100.0).contains(&usage.machine_busy_pct));
    }
}
