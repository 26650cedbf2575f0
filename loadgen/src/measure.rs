//! Measuring a benchmarked method from outside: wall time, the CPU time of every process it
//! started, and its memory, summed over all its processes.
//!
//! CPU: getrusage(RUSAGE_CHILDREN) before and after. It counts every descendant that was waited
//! for (a pool's workers are reaped by their parent, which this process reaps), so methods must
//! run one after another. Memory: a sampler walks the process tree every 20 ms through /proc and
//! keeps the peak of the summed resident sets (a spike shorter than that can be missed), and each
//! process's own peak (VmHWM), whose sum is an upper bound.

use crate::thumbnails::Machine;
use anyhow::{Context, bail};
use nix::sys::resource::{UsageWho, getrusage};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SAMPLE_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub wall: Duration,
    /// User and system time of every process the method started.
    pub cpu: Duration,
    /// The largest sum of resident sets of the method's processes at one sample.
    pub peak_rss_kib: u64,
    /// The sum over its processes of each one's peak resident set.
    pub sum_of_process_peaks_kib: u64,
}

/// Runs each sequence of commands in its own thread, one command after another, all sequences at
/// once; their output goes to `log`. Fails if any command fails.
pub fn run_measured(sequences: Vec<Vec<Command>>, log: &Path) -> anyhow::Result<Usage> {
    let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let running: Mutex<Vec<u32>> = Mutex::default();
    let done = AtomicBool::new(false);
    let before = children_cpu()?;
    let started = Instant::now();
    let (results, (peak_rss_kib, sum_of_process_peaks_kib)) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_memory(&running, &done));
        let workers: Vec<_> = sequences
            .into_iter()
            .map(|sequence| {
                let (running, log_file) = (&running, &log_file);
                scope.spawn(move || -> anyhow::Result<()> {
                    for mut command in sequence {
                        let child = command
                            .stdout(Stdio::from(log_file.try_clone()?))
                            .stderr(Stdio::from(log_file.try_clone()?))
                            .spawn();
                        let mut child = child.with_context(|| format!("starting {command:?}"))?;
                        running.lock().unwrap().push(child.id());
                        let status = child.wait()?;
                        running.lock().unwrap().retain(|&pid| pid != child.id());
                        if !status.success() {
                            bail!("{command:?} failed ({status})");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        (results, sampler.join().unwrap())
    });
    let wall = started.elapsed();
    let cpu = children_cpu()?.saturating_sub(before);
    if let Some(error) = results.into_iter().find_map(Result::err) {
        let output = std::fs::read_to_string(log).unwrap_or_default();
        let tail: String = output
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        bail!("{error:#}\nlast lines of {}:\n{tail}", log.display());
    }
    Ok(Usage {
        wall,
        cpu,
        peak_rss_kib,
        sum_of_process_peaks_kib,
    })
}

fn children_cpu() -> anyhow::Result<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let seconds = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}

/// Samples until `done`; returns (peak summed VmRSS, sum of each process's last VmHWM), in KiB.
fn sample_memory(roots: &Mutex<Vec<u32>>, done: &AtomicBool) -> (u64, u64) {
    let mut peak_sum = 0;
    let mut process_peaks: HashMap<u32, u64> = HashMap::new();
    while !done.load(Ordering::Relaxed) {
        let mut sum = 0;
        for pid in descendants(&roots.lock().unwrap()) {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue; // exited meanwhile
            };
            sum += status_kib(&status, "VmRSS").unwrap_or(0);
            if let Some(hwm) = status_kib(&status, "VmHWM") {
                let peak = process_peaks.entry(pid).or_default();
                *peak = (*peak).max(hwm);
            }
        }
        peak_sum = peak_sum.max(sum);
        std::thread::sleep(SAMPLE_EVERY);
    }
    (peak_sum, process_peaks.values().sum())
}

/// `roots` and every process below them, read from /proc/PID/task/TID/children.
fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut found = roots.to_vec();
    let mut next = 0;
    while let Some(&pid) = found.get(next) {
        next += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                found.extend(parse_children(&text));
            }
        }
    }
    found
}

/// /proc/PID/task/TID/children: process ids separated by spaces.
pub fn parse_children(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.split_whitespace().filter_map(|pid| pid.parse().ok())
}

/// A "Name:   1234 kB" line of /proc/PID/status, in KiB.
pub fn status_kib(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// The 1-minute load average, from /proc/loadavg: how busy the machine was besides the method.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// A load average as reports print it: two decimals, `?` when it could not be read.
pub fn load_text(load: Option<f64>) -> String {
    load.map_or_else(|| "?".into(), |load| format!("{load:.2}"))
}

/// Where and when a served experiment ran: the photos, the machine, the load before the run and
/// the date. Flattened into its report's JSON, as separate fields were.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setting {
    /// When the experiment started.
    pub date: String,
    pub machine: Machine,
    /// The 1-minute load average before the experiment.
    pub load_before: Option<f64>,
    pub photos: usize,
    pub megapixels_mean: f64,
}

impl Setting {
    /// As the report prints it.
    pub fn text(&self) -> String {
        format!(
            "{} photos of {:.1} MP on average, {} ({} cores), 1-minute load {} before the run, {}",
            self.photos,
            self.megapixels_mean,
            self.machine.cpu_model,
            self.machine.cores,
            load_text(self.load_before),
            self.date,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_resident_set_lines_of_proc_status() {
        let status = "Name:\tpython3\nVmPeak:\t  120000 kB\nVmHWM:\t   48212 kB\nVmRSS:\t   41020 kB\nThreads:\t1\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(41020));
        assert_eq!(status_kib(status, "VmHWM"), Some(48212));
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(status_kib("VmRSSx:\t1 kB\n", "VmRSS"), None);
    }

    #[test]
    fn reads_child_lists() {
        assert_eq!(parse_children("123 456 \n").collect::<Vec<_>>(), [123, 456]);
        assert_eq!(parse_children("").count(), 0);
    }

    #[test]
    fn measures_every_process_of_a_tree_and_fails_loudly() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        // A shell whose child burns CPU: the grandchild's time counts.
        let mut busy = Command::new("sh");
        busy.args([
            "-c",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done & wait",
        ]);
        let usage = run_measured(vec![vec![busy]], &log).unwrap();
        assert!(usage.cpu > Duration::ZERO);
        assert!(usage.wall > Duration::ZERO);

        let failing = Command::new("false");
        let error = run_measured(vec![vec![failing]], &log).unwrap_err();
        assert!(error.to_string().contains("false"), "{error}");
    }
}
