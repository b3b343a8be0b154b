//! Assertions on a run, for the boot tests. Each panics with the configuration, how the
//! run ended and the tail of its serial output, so a failure in CI explains itself.
//!
//! Add new checks here as the kernel reports more (memory map, free areas, page-table
//! layout): `assert_contains(&run, "...")` for a fixed line, [`assert_line`] with a
//! predicate for anything that needs parsing.

use crate::{RunResult, RunStatus, TestRunProblem, QEMU_EXIT_FAILURE};

/// How many lines of output a failure message shows.
const TAIL_LINES: usize = 60;

/// How the run ended, its command line, the last 60 lines of its output and QEMU's
/// stderr if any.
pub fn context(run: &RunResult) -> String {
    let lines: Vec<&str> = run.output.lines().collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    let mut text = format!(
        "run {}: {}\ncommand: {}\n--- serial output ({} lines{}) ---\n",
        run.config.label(),
        run.describe(),
        run.command,
        lines.len(),
        if start > 0 { ", last ones" } else { "" },
    );
    for line in &lines[start..] {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str("--- end of serial output ---\n");
    if !run.stderr.trim().is_empty() {
        text.push_str(&format!("--- QEMU stderr ---\n{}\n", run.stderr.trim_end()));
    }
    text
}

/// The kernel reported success (QEMU exit 33).
#[track_caller]
pub fn assert_passed(run: &RunResult) {
    assert!(run.passed(), "expected success\n{}", context(run));
}

/// The kernel itself reported failure (QEMU exit 35): not a triple fault, a QEMU error
/// or a timeout.
#[track_caller]
pub fn assert_kernel_failed(run: &RunResult) {
    assert!(
        run.status == RunStatus::Failed(Some(QEMU_EXIT_FAILURE)),
        "expected the kernel to report failure (exit {QEMU_EXIT_FAILURE})\n{}",
        context(run)
    );
}

/// Some line of the output contains `needle`.
#[track_caller]
pub fn assert_contains(run: &RunResult, needle: &str) {
    assert!(
        run.output.contains(needle),
        "expected the output to contain {needle:?}\n{}",
        context(run)
    );
}

/// No line of the output contains `needle`.
#[track_caller]
pub fn assert_not_contains(run: &RunResult, needle: &str) {
    if let Some(line) = run.output.lines().find(|l| l.contains(needle)) {
        panic!(
            "expected no output containing {needle:?}, found {line:?}\n{}",
            context(run)
        );
    }
}

/// Some line satisfies `check`; returns the first such line. `what` describes the line
/// in the failure message.
#[track_caller]
pub fn assert_line<'a>(run: &'a RunResult, what: &str, check: impl Fn(&str) -> bool) -> &'a str {
    match run.output.lines().find(|l| check(l)) {
        Some(line) => line,
        None => panic!("expected a line with {what}\n{}", context(run)),
    }
}

/// The run of in-kernel tests passed: clean exit, a summary counting at least one test
/// and agreeing with the test lines, no failed test ([`RunResult::test_problems`]).
#[track_caller]
pub fn assert_tests_passed(run: &RunResult) {
    let problems: Vec<String> = run.test_problems().iter().map(|p| p.to_string()).collect();
    assert!(
        problems.is_empty(),
        "expected the tests to pass: {}\n{}",
        problems.join("; "),
        context(run)
    );
}

/// The run of in-kernel tests did not pass, and the reasons include `problem`.
#[track_caller]
pub fn assert_test_problem(run: &RunResult, problem: &TestRunProblem) {
    assert!(
        run.test_problems().contains(problem),
        "expected {problem:?} among the problems {:?}\n{}",
        run.test_problems(),
        context(run)
    );
}

#[cfg(test)]
mod tests;
