//! What the kernel prints on its serial console, and how to read it.
//!
//! Formats (written by the kernel's test harness and benches):
//! - log lines: `[INFO  cpu0] message`;
//! - per test: `test <module::name> ... ` printed *before* the test runs, then `ok`,
//!   `skipped: why` (it could not check what it claims in this configuration) or
//!   `FAILED: why` when it ends. Log lines the test prints land in between, so the result
//!   may come on a later line; a hang leaves `test <name> ... ` as the last line;
//! - the summary: `N passed, N failed, N skipped` (`, N skipped` absent in older
//!   kernels' output reads as 0);
//! - benchmarks: `BENCH {"name":..., "value":..., "unit":..., ...}`.
//!
//! [`SerialFilter`] turns the raw byte stream into clean text (no carriage returns, no
//! terminal escape sequences: OVMF clears the screen and moves the cursor before the
//! kernel starts); [`parse`] reads the clean text into a [`Report`].

use std::ops::Range;

/// Removes `\r` and ANSI/VT100 escape sequences from a byte stream, chunk by chunk (a
/// sequence may be split across chunks).
#[derive(Clone, Debug, Default)]
pub struct SerialFilter {
    state: FilterState,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum FilterState {
    #[default]
    Text,
    /// After ESC.
    Escape,
    /// Inside `ESC [ ... final`.
    Csi,
    /// After `ESC (` or `ESC )`: one more byte (the character set) follows.
    Charset,
}

impl SerialFilter {
    /// A filter at the start of a stream.
    pub fn new() -> SerialFilter {
        SerialFilter::default()
    }

    /// Append the clean part of `input` to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &byte in input {
            self.state = match (self.state, byte) {
                (FilterState::Text, 0x1b) => FilterState::Escape,
                (FilterState::Text, b'\r') => FilterState::Text,
                (FilterState::Text, byte) => {
                    out.push(byte);
                    FilterState::Text
                }
                (FilterState::Escape, b'[') => FilterState::Csi,
                (FilterState::Escape, b'(' | b')') => FilterState::Charset,
                (FilterState::Escape, _) => FilterState::Text,
                (FilterState::Csi, 0x40..=0x7e) => FilterState::Text,
                (FilterState::Csi, _) => FilterState::Csi,
                (FilterState::Charset, _) => FilterState::Text,
            };
        }
    }
}

/// `text` without carriage returns and escape sequences.
pub fn clean(text: &[u8]) -> String {
    let mut out = Vec::with_capacity(text.len());
    SerialFilter::new().push(text, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// How one test ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestResult {
    /// `... ok`
    Ok,
    /// `... FAILED: why` (the text after `FAILED`, without the colon).
    Failed(String),
    /// `... skipped: why` (the text after the colon).
    Skipped(String),
}

/// One finished test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestOutcome {
    /// `module::name`
    pub name: String,
    /// How it ended.
    pub result: TestResult,
    /// Output lines (0-based) from its `test <name> ...` line to the line with its
    /// result, for timing it (see [`crate::RunResult::test_durations`]).
    pub lines: Range<usize>,
}

/// The kernel's `N passed, N failed, N skipped` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tests that passed.
    pub passed: u32,
    /// Tests that failed.
    pub failed: u32,
    /// Tests that ran and could not check what they claim here (0 when the line does not
    /// say).
    pub skipped: u32,
}

impl Summary {
    /// Every test the line counts.
    pub fn total(&self) -> u32 {
        self.passed + self.failed + self.skipped
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// One `BENCH {json}` line.
#[derive(Clone, Debug, PartialEq)]
pub struct Bench {
    /// The text after `BENCH `.
    pub raw: String,
    /// The parsed JSON; `None` when the text is not valid JSON.
    pub json: Option<serde_json::Value>,
}

impl Bench {
    /// The `name` field.
    pub fn name(&self) -> Option<&str> {
        self.json.as_ref()?.get("name")?.as_str()
    }

    /// The `value` field, as a number.
    pub fn value(&self) -> Option<f64> {
        self.json.as_ref()?.get("value")?.as_f64()
    }

    /// The `unit` field.
    pub fn unit(&self) -> Option<&str> {
        self.json.as_ref()?.get("unit")?.as_str()
    }
}

/// Everything [`parse`] found in a run's output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Finished tests, in order.
    pub tests: Vec<TestOutcome>,
    /// A test that started and never printed its result (it hung, or the kernel died in
    /// it).
    pub running: Option<String>,
    /// The output line (0-based) where `running` started.
    pub running_since_line: usize,
    /// The last summary line, if any.
    pub summary: Option<Summary>,
    /// Every `BENCH` line, in order.
    pub benches: Vec<Bench>,
}

impl Report {
    /// Finished tests that passed.
    pub fn passed(&self) -> usize {
        self.tests
            .iter()
            .filter(|t| t.result == TestResult::Ok)
            .count()
    }

    /// Finished tests that failed.
    pub fn failed(&self) -> usize {
        self.failures().count()
    }

    /// Finished tests that skipped.
    pub fn skipped(&self) -> usize {
        self.skips().count()
    }

    /// The failed tests with their reasons.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tests.iter().filter_map(|t| match &t.result {
            TestResult::Failed(why) => Some((t.name.as_str(), why.as_str())),
            _ => None,
        })
    }

    /// The skipped tests with their reasons.
    pub fn skips(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tests.iter().filter_map(|t| match &t.result {
            TestResult::Skipped(why) => Some((t.name.as_str(), why.as_str())),
            _ => None,
        })
    }

    /// The finished tests counted the way the summary line counts them.
    pub fn counted(&self) -> Summary {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Summary {
            passed: count(self.passed()),
            failed: count(self.failed()),
            skipped: count(self.skipped()),
        }
    }

    /// The outcome of the test called `name`, if it finished.
    pub fn test(&self, name: &str) -> Option<&TestResult> {
        self.tests
            .iter()
            .find(|t| t.name == name)
            .map(|t| &t.result)
    }
}

/// Read the kernel's (clean) output: test lines, the summary and BENCH lines.
pub fn parse(output: &str) -> Report {
    let mut report = Report::default();
    for (index, raw_line) in output.lines().enumerate() {
        let line = raw_line.trim();
        if let Some((name, rest)) = test_line(line) {
            // A test that never printed its result before the next one began: the
            // harness lost it; the summary line (if any) still counts it.
            report.running = None;
            match result_word(rest) {
                Some(result) => report.tests.push(TestOutcome {
                    name: name.to_owned(),
                    result,
                    lines: index..index + 1,
                }),
                None => {
                    report.running = Some(name.to_owned());
                    report.running_since_line = index;
                }
            }
        } else if let Some(result) = report.running.as_ref().and(result_word(line)) {
            if let Some(name) = report.running.take() {
                let lines = report.running_since_line..index + 1;
                report.tests.push(TestOutcome {
                    name,
                    result,
                    lines,
                });
            }
        } else if let Some(summary) = summary_line(line) {
            report.summary = Some(summary);
        } else if let Some(json) = line.strip_prefix("BENCH ") {
            let raw = json.trim().to_owned();
            let json = serde_json::from_str(&raw).ok();
            report.benches.push(Bench { raw, json });
        }
    }
    report
}

/// `test <name> ... <rest>` → (name, rest).
fn test_line(line: &str) -> Option<(&str, &str)> {
    let after = line.strip_prefix("test ")?;
    let (name, rest) = after.split_once(" ...")?;
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    Some((name, rest.trim()))
}

/// The result in the text after `test <name> ...` (or on a later line while the test
/// runs): `ok` as the last word (`(1033714 frames) ok` counts), the word `FAILED`
/// followed by an optional `: why`, or the word `skipped:` followed by why (or `skipped`
/// alone as the whole text). A kernel log line (`[INFO  cpu1] ...`) is never a result,
/// whatever it ends with; nor is the summary (`..., 2 skipped` has no colon).
fn result_word(text: &str) -> Option<TestResult> {
    let text = text.trim();
    if is_log_line(text) {
        return None;
    }
    let word_start = |at: usize| at == 0 || text[..at].ends_with([' ', '\t', ')']);
    if let Some(at) = text.find("FAILED") {
        let rest = &text[at + "FAILED".len()..];
        let word_ends = rest.is_empty() || rest.starts_with([' ', ':', '\t']);
        if word_start(at) && word_ends {
            let why = rest.trim_start().trim_start_matches(':').trim();
            return Some(TestResult::Failed(why.to_owned()));
        }
    }
    if text == "skipped" {
        return Some(TestResult::Skipped(String::new()));
    }
    if let Some(at) = text.find("skipped:").filter(|&at| word_start(at)) {
        let why = text[at + "skipped:".len()..].trim();
        return Some(TestResult::Skipped(why.to_owned()));
    }
    let at = text.len().checked_sub(2)?;
    (text.ends_with("ok") && word_start(at)).then_some(TestResult::Ok)
}

/// `[LEVEL cpuN] ...`, the kernel's log format.
fn is_log_line(text: &str) -> bool {
    let Some(inside) = text.strip_prefix('[') else {
        return false;
    };
    ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
        .iter()
        .any(|level| inside.starts_with(level))
}

/// `N passed, M failed` anywhere in the line, as whole words, optionally followed by
/// `, K skipped` (cargo's `N passed; M failed` does not match).
fn summary_line(line: &str) -> Option<Summary> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let bare = |w: &str| {
        w.trim_end_matches(|c: char| c.is_ascii_punctuation())
            .to_owned()
    };
    (0..words.len().saturating_sub(3)).find_map(|i| {
        let w = &words[i..];
        if w[1] != "passed," || bare(w[3]) != "failed" {
            return None;
        }
        let skipped = match (w[3].ends_with(','), w.get(4), w.get(5)) {
            (true, Some(n), Some(word)) if bare(word) == "skipped" => n.parse().ok()?,
            _ => 0,
        };
        Some(Summary {
            passed: w[0].parse().ok()?,
            failed: w[2].parse().ok()?,
            skipped,
        })
    })
}

#[cfg(test)]
mod tests;
