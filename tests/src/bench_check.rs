//! The check of `./run-qemu.sh bench --quick`: every figure the benchmarks are expected
//! to print has its `BENCH {json}` line, exactly once, and each `BENCH` line parses as a
//! JSON object with a string `name`, a number `value` and a string `unit`. Timings are
//! not checked (a quick run measures each figure once, under emulation).

use serde_json::Value;
use std::collections::BTreeMap;

/// The names of every `BENCH` line a benchmark run on `cpus` CPUs must print: the host
/// buddy benchmark, the in-kernel buddy comparison, the TLB flush threshold, our batching
/// policy against Linux's, shootdown latency of user- and kernel-half batches to as many
/// remote CPUs as the machine has (1, 3 and 7), migration throughput, and huge pages
/// promoted in place (against the copying collapse) and split at 2 MiB and 1 GiB.
pub fn expected_names(cpus: u32) -> Vec<String> {
    let mut names = Vec::new();
    for order in [0, 9, 18] {
        names.push(format!("host.buddy.alloc_free.order{order}"));
        names.push(format!("kernel.buddy.alloc_free.order{order}"));
    }
    for n in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] {
        names.push(format!("tlb.threshold.n{n}"));
    }
    names.push("tlb.threshold".to_owned());
    for n in [16, 33, 64, 128, 256] {
        names.push(format!("tlb.policy.n{n}"));
    }
    for remote in [1, 3, 7].into_iter().filter(|&r| r < cpus) {
        for half in ["", "kernel."] {
            for pages in ["1", "32", "512", "full"] {
                names.push(format!("tlb.shootdown.{half}{pages}.r{remote}"));
            }
        }
    }
    for size in ["4k", "2m", "1g"] {
        names.push(format!("vm.migrate.{size}"));
    }
    for size in ["2m", "1g"] {
        for op in ["promote", "split"] {
            names.push(format!("vm.huge.{op}.{size}"));
        }
    }
    names
}

/// What is wrong with a benchmark run's output.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// An expected figure has no line.
    Missing(String),
    /// A figure has several lines.
    Repeated(String, usize),
    /// A `BENCH` line is not a JSON object with `name`, `value` and `unit` (the line).
    Unparsed(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing(name) => write!(f, "missing: {name}"),
            Problem::Repeated(name, n) => write!(f, "printed {n} times: {name}"),
            Problem::Unparsed(line) => {
                write!(f, "not a BENCH object with name, value and unit: {line}")
            }
        }
    }
}

/// The figure named by one `BENCH` line's JSON, if it has the required fields.
fn figure(json: &str) -> Option<String> {
    let v: Value = serde_json::from_str(json).ok()?;
    let name = v.get("name")?.as_str()?;
    v.get("value")?.as_f64()?;
    v.get("unit")?.as_str()?;
    Some(name.to_owned())
}

/// Check `output` (a whole run's console) against `expected`: for each expected name,
/// whether it was printed once and parsed; then every other problem. Lines of figures
/// not expected are allowed (they are reported by name in the first result).
pub fn check(output: &str, expected: &[String]) -> (Vec<(String, bool)>, Vec<Problem>) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for line in output.lines() {
        let Some(json) = line.trim_start().strip_prefix("BENCH ") else {
            continue;
        };
        match figure(json.trim()) {
            Some(name) => *seen.entry(name).or_default() += 1,
            None => problems.push(Problem::Unparsed(line.trim().to_owned())),
        }
    }
    let mut results = Vec::new();
    for name in expected {
        let n = seen.get(name).copied().unwrap_or(0);
        match n {
            0 => problems.push(Problem::Missing(name.clone())),
            1 => {}
            n => problems.push(Problem::Repeated(name.clone(), n)),
        }
        results.push((name.clone(), n == 1));
    }
    (results, problems)
}

#[cfg(test)]
mod tests;
