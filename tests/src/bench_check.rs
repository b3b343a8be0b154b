//! The check of `./run-qemu.sh bench --quick`: every figure the benchmarks are expected
//! to print has its `BENCH {json}` line, exactly once, and each `BENCH` line parses as a
//! JSON object with a string `name`, a number `value` and a string `unit`. Timings are
//! not checked (a quick run measures each figure once, under emulation), but values of the
//! exchange and contiguity figures that cannot be right are: a `value` or `ratio` that is
//! not a positive finite number, and a contiguity figure (`vm.contig.*`) whose exchanges allocated frames, whose VMAs did not
//! end contiguous, or that moved fewer pages than were misplaced; and the churn check
//! (`# vm.huge.churn check: ... ok`: in-place promotion kept memory huge while copying
//! less than the copying collapse) must say ok.

use serde_json::Value;
use std::collections::BTreeMap;

/// The names of every `BENCH` line a benchmark run on `cpus` CPUs must print: the host
/// buddy benchmark, the in-kernel buddy comparison, the host contiguity benchmarks (into free memory and tight), the TLB flush threshold, our batching
/// policy against Linux's, shootdown latency of user- and kernel-half batches to as many
/// remote CPUs as the machine has (1, 3 and 7), migration throughput, exchange against
/// three migrations and the exchange's swap buffers, contiguity generation, and huge pages
/// promoted in place (against the copying collapse) and split at 2 MiB and 1 GiB, and
/// the churn workload's huge share under each policy.
pub fn expected_names(cpus: u32) -> Vec<String> {
    let mut names = Vec::new();
    for order in [0, 9, 18] {
        names.push(format!("host.buddy.alloc_free.order{order}"));
        names.push(format!("kernel.buddy.alloc_free.order{order}"));
    }
    for scenario in ["4k", "4k.tight"] {
        names.push(format!("host.contig.{scenario}"));
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
    for size in ["4k", "2m", "1g"] {
        names.push(format!("vm.exchange.{size}"));
    }
    for size in ["4k", "2m"] {
        names.push(format!("vm.exchange.buffer.{size}"));
    }
    for scenario in ["4k", "4k.tight", "2m.tight"] {
        names.push(format!("vm.contig.{scenario}"));
    }
    for size in ["2m", "1g"] {
        for op in ["promote", "split"] {
            names.push(format!("vm.huge.{op}.{size}"));
        }
    }
    for policy in ["fault_only", "copy_collapse", "contig_promote"] {
        names.push(format!("vm.huge.churn.{policy}"));
    }
    names
}

/// What is wrong with the churn check's line (`# vm.huge.churn check: ...: ok`): it is
/// missing or does not say ok.
fn churn_check(output: &str) -> Option<String> {
    let line = output
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("# vm.huge.churn check:"));
    match line {
        Some(l) if l.ends_with(": ok") => None,
        Some(l) => Some(l.to_owned()),
        None => Some("no # vm.huge.churn check line".to_owned()),
    }
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
    /// A figure's values cannot be right (its name, why).
    Insane(String, String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing(name) => write!(f, "missing: {name}"),
            Problem::Repeated(name, n) => write!(f, "printed {n} times: {name}"),
            Problem::Unparsed(line) => {
                write!(f, "not a BENCH object with name, value and unit: {line}")
            }
            Problem::Insane(name, why) => write!(f, "{name}: {why}"),
        }
    }
}

/// The figure named by one `BENCH` line's JSON and the line's values, if it has the
/// required fields.
fn figure(json: &str) -> Option<(String, Value)> {
    let v: Value = serde_json::from_str(json).ok()?;
    let name = v.get("name")?.as_str()?.to_owned();
    v.get("value")?.as_f64()?;
    v.get("unit")?.as_str()?;
    Some((name, v))
}

/// Why a figure's values cannot be right, if they cannot (checked for the exchange and
/// contiguity figures).
fn insane(name: &str, v: &Value) -> Option<String> {
    if !name.starts_with("vm.exchange.") && !name.starts_with("vm.contig.") {
        return None;
    }
    let positive = |field: &str| {
        v.get(field)
            .and_then(Value::as_f64)
            .is_some_and(|x| x.is_finite() && x > 0.0)
    };
    for field in ["value", "ratio"] {
        if (field == "value" || v.get(field).is_some()) && !positive(field) {
            return Some(format!("{field} is not a positive number"));
        }
    }
    if !name.starts_with("vm.contig.") {
        return None;
    }
    let number = |field: &str| v.get(field).and_then(Value::as_f64);
    if number("frames_allocated_by_exchange") != Some(0.0) {
        return Some("its exchanges allocated frames (or it does not say)".to_owned());
    }
    if v.get("contiguous").and_then(Value::as_bool) != Some(true) {
        return Some("its VMAs did not end contiguous (or it does not say)".to_owned());
    }
    match number("pages_moved_per_misplaced") {
        Some(x) if x >= 1.0 => None,
        _ => Some("it moved fewer pages than were misplaced (or it does not say)".to_owned()),
    }
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
            Some((name, values)) => {
                if let Some(why) = insane(&name, &values) {
                    problems.push(Problem::Insane(name.clone(), why));
                }
                *seen.entry(name).or_default() += 1;
            }
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
    if let Some(why) = churn_check(output) {
        problems.push(Problem::Insane("vm.huge.churn".to_owned(), why));
    }
    (results, problems)
}

#[cfg(test)]
mod tests;
