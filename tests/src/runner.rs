//! Boot one [`QemuConfig`] and report how it ended.
//!
//! QEMU runs in its own process group with the serial console on its stdout. Two reader
//! threads collect stdout (cleaned by [`SerialFilter`], optionally echoed live) and
//! stderr; the calling thread polls for exit, the timeout and Ctrl-C, and on timeout
//! kills the whole group. At most `$MMK_QEMU_JOBS` (default 2) runs of one process boot
//! at once; the others wait for a slot before their timeout starts.

use crate::output::{self, SerialFilter, Summary};
use crate::{sys, Error, Firmware, QemuConfig};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// QEMU's exit status when the kernel reports success (isa-debug-exit value 0x10).
pub const QEMU_EXIT_SUCCESS: i32 = 33;
/// QEMU's exit status when the kernel reports failure (isa-debug-exit value 0x11).
pub const QEMU_EXIT_FAILURE: i32 = 35;

/// The fw_cfg file the kernel reads its options from.
const CMDLINE_FW_CFG: &str = "opt/mmk/cmdline";

/// OVMF CODE/VARS pairs, most likely first (Debian's `ovmf`, then other layouts).
const OVMF_PAIRS: [(&str, &str); 4] = [
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2-ovmf/x64/OVMF_CODE.fd",
        "/usr/share/edk2-ovmf/x64/OVMF_VARS.fd",
    ),
];

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// The kernel reported success (QEMU exit status 33).
    Passed,
    /// Anything else: the kernel reported failure (35), QEMU ended without the
    /// kernel's exit code (0 after a triple fault with `-no-reboot`), QEMU itself failed
    /// (1), or QEMU was killed by a signal (`None`).
    Failed(Option<i32>),
    /// Killed after a timeout: the run's, or one test's. `last_test` is the test that
    /// started and never finished; `None` when no test was running (the kernel hung
    /// while booting, or outside any test).
    TimedOut {
        /// The test that hung, if any.
        last_test: Option<String>,
        /// The timeout that ran out.
        after: Duration,
    },
    /// Killed because this process got SIGINT/SIGTERM/SIGHUP (the signal number).
    Interrupted(i32),
}

/// Why a run of the in-kernel tests does not count as passed (see
/// [`RunResult::test_problems`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestRunProblem {
    /// Tests that printed `FAILED`, with why.
    FailedTests(Vec<(String, String)>),
    /// The run did not end with the kernel's own success exit ([`RunResult::describe`]
    /// says how it ended).
    NotCleanExit(RunStatus),
    /// No `N passed, N failed, N skipped` line.
    NoSummary,
    /// The summary counts no test at all (a filter that matches nothing).
    NoTests,
    /// The summary disagrees with the test lines printed.
    CountMismatch {
        /// What the summary line says.
        summary: Summary,
        /// What the `test ... ` lines add up to.
        counted: Summary,
    },
}

impl std::fmt::Display for TestRunProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TestRunProblem::FailedTests(tests) => {
                let names: Vec<&str> = tests.iter().map(|(name, _)| name.as_str()).collect();
                write!(f, "failed tests: {}", names.join(", "))
            }
            TestRunProblem::NotCleanExit(_) => f.write_str("the kernel did not exit cleanly"),
            TestRunProblem::NoSummary => {
                f.write_str("no 'N passed, N failed, N skipped' summary line")
            }
            TestRunProblem::NoTests => f.write_str("no test ran (0 in the summary)"),
            TestRunProblem::CountMismatch { summary, counted } => write!(
                f,
                "the summary says {summary} but the test lines add up to {counted}"
            ),
        }
    }
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The serial console, cleaned: `\n` line ends, no escape sequences.
    pub output: String,
    /// What QEMU printed on stderr (warnings, errors).
    pub stderr: String,
    /// How the run ended.
    pub status: RunStatus,
    /// Wall time from QEMU's start to its end.
    pub elapsed: Duration,
    /// The configuration that ran (its label names it in messages).
    pub config: QemuConfig,
    /// The QEMU command line, for reproducing by hand.
    pub command: String,
    /// For each complete line of `output`, when its newline arrived (since QEMU
    /// started).
    pub line_times: Vec<Duration>,
}

impl RunResult {
    /// Whether the kernel reported success.
    pub fn passed(&self) -> bool {
        self.status == RunStatus::Passed
    }

    /// Parse the output: tests, summary, BENCH lines.
    pub fn report(&self) -> output::Report {
        output::parse(&self.output)
    }

    /// Everything that keeps this run, read as a run of the in-kernel tests, from
    /// passing: failed tests, an exit other than the kernel's own success, a missing
    /// summary, a summary counting no test, a summary that disagrees with the test lines.
    /// Empty exactly when the run passed.
    pub fn test_problems(&self) -> Vec<TestRunProblem> {
        let report = self.report();
        let mut problems = Vec::new();
        let failed: Vec<(String, String)> = report
            .failures()
            .map(|(name, why)| (name.to_owned(), why.to_owned()))
            .collect();
        if !failed.is_empty() {
            problems.push(TestRunProblem::FailedTests(failed));
        }
        if self.status != RunStatus::Passed {
            problems.push(TestRunProblem::NotCleanExit(self.status.clone()));
        }
        match report.summary {
            None => problems.push(TestRunProblem::NoSummary),
            Some(summary) if summary.total() == 0 => problems.push(TestRunProblem::NoTests),
            Some(summary) if summary != report.counted() => {
                problems.push(TestRunProblem::CountMismatch {
                    summary,
                    counted: report.counted(),
                })
            }
            Some(_) => {}
        }
        problems
    }

    /// What hung, for a timeout: the unfinished test's name, or `boot` when no test
    /// was running.
    pub fn hung(&self) -> Option<&str> {
        match &self.status {
            RunStatus::TimedOut { last_test, .. } => Some(last_test.as_deref().unwrap_or("boot")),
            _ => None,
        }
    }

    /// How long each finished test took: from the end of the line before its `test`
    /// line to the end of its result line, as precise as the serial chunks arrive.
    pub fn test_durations(&self) -> Vec<(String, Duration)> {
        let at = |line: usize| self.line_times.get(line).copied().unwrap_or(self.elapsed);
        self.report()
            .tests
            .into_iter()
            .map(|test| {
                let start = match test.lines.start {
                    0 => Duration::ZERO,
                    line => at(line - 1),
                };
                let end = at(test.lines.end.saturating_sub(1));
                (test.name, end.saturating_sub(start))
            })
            .collect()
    }

    /// The last non-empty line of output, if any.
    pub fn last_line(&self) -> Option<&str> {
        self.output
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
    }

    /// One line saying how the run ended, e.g. `TIMEOUT: buddy::huge hung after 600 s`
    /// or `kernel reported failure (exit 35)`.
    pub fn describe(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        match &self.status {
            RunStatus::Passed => format!("passed (exit {QEMU_EXIT_SUCCESS}) in {secs:.1} s"),
            RunStatus::TimedOut { after, .. } => {
                let mut text = format!(
                    "TIMEOUT: {} hung after {} s",
                    self.hung().unwrap_or("boot"),
                    after.as_secs()
                );
                if let Some(last) = self.last_line() {
                    text.push_str(&format!(" (last output: {last:?})"));
                }
                text
            }
            RunStatus::Interrupted(signal) => format!("interrupted by signal {signal}"),
            RunStatus::Failed(code) => {
                let what = match code {
                    Some(QEMU_EXIT_FAILURE) => {
                        format!("kernel reported failure (exit {QEMU_EXIT_FAILURE})")
                    }
                    Some(0) => "QEMU exited with status 0 without the kernel's exit code \
                                (triple fault or reset under -no-reboot?)"
                        .to_owned(),
                    Some(1) => "QEMU failed (exit 1); its stderr says why".to_owned(),
                    Some(code) => format!("QEMU exited with unexpected status {code}"),
                    None => "QEMU was killed by a signal".to_owned(),
                };
                match self.report().running {
                    Some(test) => format!("{what}, during test {test}, after {secs:.1} s"),
                    None => format!("{what} after {secs:.1} s"),
                }
            }
        }
    }
}

/// The QEMU binary: `$MMK_QEMU` or `qemu-system-x86_64`.
fn qemu_program() -> OsString {
    std::env::var_os("MMK_QEMU")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "qemu-system-x86_64".into())
}

/// The OVMF CODE and VARS files: `$MMK_OVMF_CODE`/`$MMK_OVMF_VARS` or the first pair
/// of [`OVMF_PAIRS`] that exists.
fn find_ovmf() -> Result<(PathBuf, PathBuf), Error> {
    if let (Some(code), Some(vars)) = (
        std::env::var_os("MMK_OVMF_CODE"),
        std::env::var_os("MMK_OVMF_VARS"),
    ) {
        let (code, vars) = (PathBuf::from(code), PathBuf::from(vars));
        if code.is_file() && vars.is_file() {
            return Ok((code, vars));
        }
        return Err(Error::MissingFirmware { tried: vec![code] });
    }
    OVMF_PAIRS
        .iter()
        .map(|(code, vars)| (PathBuf::from(code), PathBuf::from(vars)))
        .find(|(code, vars)| code.is_file() && vars.is_file())
        .ok_or_else(|| Error::MissingFirmware {
            tried: OVMF_PAIRS.iter().map(|(code, _)| code.into()).collect(),
        })
}

/// QEMU's arguments for `config`. `ovmf` is (CODE, writable copy of VARS) for UEFI.
pub fn qemu_args(config: &QemuConfig, ovmf: Option<(&Path, &Path)>) -> Vec<OsString> {
    let mut drive = OsString::from("format=raw,snapshot=on,file=");
    drive.push(config.image_path());
    let mut args: Vec<OsString> = vec!["-drive".into(), drive];
    if let Some((code, vars)) = ovmf {
        let mut code_arg = OsString::from("if=pflash,format=raw,readonly=on,file=");
        code_arg.push(code);
        let mut vars_arg = OsString::from("if=pflash,format=raw,snapshot=on,file=");
        vars_arg.push(vars);
        args.extend(["-drive".into(), code_arg, "-drive".into(), vars_arg]);
    }
    // fw_cfg strings are split on commas by QEMU's option parser; ",," escapes one.
    let options = config.options.replace(',', ",,");
    let fixed = [
        "-serial",
        "stdio",
        "-display",
        "none",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-no-reboot",
        // QEMU's default CPU model lacks 1 GiB pages, which the kernel only uses when
        // CPUID lists them; a later `-cpu` in the extra arguments replaces this one.
        "-cpu",
        "qemu64,+pdpe1gb",
        "-m",
    ];
    args.extend(fixed.iter().map(OsString::from));
    args.push(config.mem.to_string().into());
    args.extend(["-smp".into(), config.smp.to_string().into()]);
    // QEMU rejects an empty string; without the file the kernel runs its defaults.
    if !options.trim().is_empty() {
        args.extend([
            "-fw_cfg".into(),
            format!("name={CMDLINE_FW_CFG},string={options}").into(),
        ]);
    }
    if config.gdb {
        args.extend(["-s".into(), "-S".into()]);
    }
    args.extend(config.extra_args.iter().map(OsString::from));
    args
}

/// A private copy of OVMF's VARS file (OVMF writes it), removed when dropped.
struct TempVars(PathBuf);

impl TempVars {
    fn copy_of(vars: &Path) -> Result<TempVars, Error> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "mmk-ovmf-vars-{}-{}.fd",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::copy(vars, &path).map_err(|source| Error::Io {
            what: format!("copying {} to {}", vars.display(), path.display()),
            source,
        })?;
        Ok(TempVars(path))
    }
}

impl Drop for TempVars {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Limits how many QEMUs this process runs at once (`$MMK_QEMU_JOBS`, default 2): the
/// machines have 2 cores and TCG keeps one busy per guest CPU thread.
struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

static SLOTS: Slots = Slots {
    used: Mutex::new(0),
    freed: Condvar::new(),
};

struct SlotGuard;

impl Slots {
    fn limit() -> usize {
        std::env::var("MMK_QEMU_JOBS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(2)
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acquire(&'static self) -> SlotGuard {
        let limit = Self::limit();
        let mut used = self.lock();
        while *used >= limit {
            used = self
                .freed
                .wait(used)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *used += 1;
        SlotGuard
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        *SLOTS.lock() -= 1;
        SLOTS.freed.notify_one();
    }
}

/// Where a reader puts what it reads.
struct Sink {
    bytes: Arc<Mutex<Vec<u8>>>,
    /// Arrival time of each newline, measured from the instant given, when timing lines.
    line_times: Option<(Arc<Mutex<Vec<Duration>>>, Instant)>,
}

/// Copy `source` into `sink` (through a [`SerialFilter`] when `filter`), echoing each
/// chunk as it arrives when `echo` gives a writer.
fn spawn_reader(
    mut source: impl Read + Send + 'static,
    sink: Sink,
    filter: bool,
    echo: Option<fn() -> Box<dyn Write>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut filter = filter.then(SerialFilter::new);
        let mut echo = echo.map(|make| make());
        let mut chunk = [0u8; 4096];
        let mut clean = Vec::with_capacity(chunk.len());
        loop {
            let n = match source.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            clean.clear();
            match filter.as_mut() {
                Some(filter) => filter.push(&chunk[..n], &mut clean),
                None => clean.extend_from_slice(&chunk[..n]),
            }
            if let Some(out) = echo.as_mut() {
                // A closed stdout (e.g. `| head`) must not stop the capture.
                let _ = out.write_all(&clean).and_then(|()| out.flush());
            }
            if let Some((times, started)) = &sink.line_times {
                let now = started.elapsed();
                let newlines = clean.iter().filter(|&&b| b == b'\n').count();
                times
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(std::iter::repeat_n(now, newlines));
            }
            sink.bytes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(&clean);
        }
    })
}

fn stdout_sink() -> Box<dyn Write> {
    Box::new(io::stdout())
}

fn stderr_sink() -> Box<dyn Write> {
    Box::new(io::stderr())
}

fn exit_status(status: ExitStatus) -> RunStatus {
    match status.code() {
        Some(QEMU_EXIT_SUCCESS) => RunStatus::Passed,
        code => RunStatus::Failed(code),
    }
}

/// Boot `config` in QEMU and wait for it to end (or time out).
///
/// Errors only when the run cannot start (missing image or firmware, no QEMU); every
/// way a started run can end is a [`RunStatus`].
pub fn run(config: &QemuConfig) -> Result<RunResult, Error> {
    let image = config.image_path();
    if !image.is_file() {
        return Err(Error::MissingImage(image));
    }
    let (vars_copy, ovmf_code) = match config.firmware {
        Firmware::Bios => (None, None),
        Firmware::Uefi => {
            let (code, vars) = find_ovmf()?;
            (Some(TempVars::copy_of(&vars)?), Some(code))
        }
    };
    let ovmf = ovmf_code
        .as_deref()
        .zip(vars_copy.as_ref().map(|v| v.0.as_path()));
    let program = qemu_program();
    let args = qemu_args(config, ovmf);
    let command_line = std::iter::once(&program)
        .chain(&args)
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");

    let _slot = (!config.gdb).then(|| SLOTS.acquire());

    let mut command = Command::new(&program);
    command
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::isolate(&mut command);
    let started = Instant::now();
    let mut child = command.spawn().map_err(|source| Error::Spawn {
        program: program.to_string_lossy().into_owned(),
        source,
    })?;

    let output = Arc::new(Mutex::new(Vec::new()));
    let line_times = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        child.stdout.take().map(|out| {
            let echo = config
                .stream
                .then_some(stdout_sink as fn() -> Box<dyn Write>);
            let sink = Sink {
                bytes: Arc::clone(&output),
                line_times: Some((Arc::clone(&line_times), started)),
            };
            spawn_reader(out, sink, true, echo)
        }),
        child.stderr.take().map(|err| {
            let echo = config
                .stream
                .then_some(stderr_sink as fn() -> Box<dyn Write>);
            let sink = Sink {
                bytes: Arc::clone(&stderr),
                line_times: None,
            };
            spawn_reader(err, sink, false, echo)
        }),
    ];

    let deadline = (!config.gdb).then(|| (started + config.timeout, config.timeout));
    let watch = config
        .test_timeout
        .filter(|_| !config.gdb)
        .map(|limit| TestWatch {
            output: Arc::clone(&output),
            line_times: Arc::clone(&line_times),
            started,
            limit,
        });
    let mut status = wait(&mut child, deadline, watch.as_ref())?;
    let elapsed = started.elapsed();
    // QEMU is gone, so both pipes reach end of file and the readers finish.
    for reader in readers.into_iter().flatten() {
        let _ = reader.join();
    }
    drop(vars_copy);

    let take = |buffer: &Arc<Mutex<Vec<u8>>>| {
        let bytes = std::mem::take(&mut *buffer.lock().unwrap_or_else(PoisonError::into_inner));
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let output = take(&output);
    let line_times =
        std::mem::take(&mut *line_times.lock().unwrap_or_else(PoisonError::into_inner));
    if let RunStatus::TimedOut { last_test, .. } = &mut status {
        *last_test = output::parse(&output).running;
    }
    Ok(RunResult {
        output,
        stderr: take(&stderr),
        status,
        elapsed,
        config: config.clone(),
        command: command_line,
        line_times,
    })
}

/// What the per-test timeout watches: the output so far and when each line arrived.
struct TestWatch {
    output: Arc<Mutex<Vec<u8>>>,
    line_times: Arc<Mutex<Vec<Duration>>>,
    started: Instant,
    limit: Duration,
}

impl TestWatch {
    /// How often the output is read again.
    const EVERY: Duration = Duration::from_millis(250);

    /// Whether a test has been running for longer than the limit: it started at the end
    /// of the line before its `test` line (the start of the run for the first line).
    fn overdue(&self) -> bool {
        let text = {
            let bytes = self.output.lock().unwrap_or_else(PoisonError::into_inner);
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let report = output::parse(&text);
        if report.running.is_none() {
            return false;
        }
        let since = match report.running_since_line {
            0 => Duration::ZERO,
            line => {
                let times = self
                    .line_times
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                times.get(line - 1).copied().unwrap_or(Duration::ZERO)
            }
        };
        self.started.elapsed().saturating_sub(since) > self.limit
    }
}

/// Poll the child until it exits, the deadline (with its timeout) passes, a test outruns
/// the `watch`'s limit or we are interrupted. A timeout comes back without its
/// `last_test`: the caller reads it from the complete output.
fn wait(
    child: &mut Child,
    deadline: Option<(Instant, Duration)>,
    watch: Option<&TestWatch>,
) -> Result<RunStatus, Error> {
    let io_error = |source| Error::Io {
        what: "waiting for QEMU".to_owned(),
        source,
    };
    let mut next_look = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(io_error)? {
            return Ok(exit_status(status));
        }
        if let Some(signal) = sys::interrupted() {
            sys::kill_group(child);
            child.wait().map_err(io_error)?;
            return Ok(RunStatus::Interrupted(signal));
        }
        let ran_out = match (deadline, watch) {
            (Some((at, after)), _) if Instant::now() >= at => Some(after),
            (_, Some(w)) if Instant::now() >= next_look => {
                next_look = Instant::now() + TestWatch::EVERY;
                w.overdue().then_some(w.limit)
            }
            _ => None,
        };
        if let Some(after) = ran_out {
            sys::kill_group(child);
            child.wait().map_err(io_error)?;
            return Ok(RunStatus::TimedOut {
                last_test: None,
                after,
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Quote a word for a POSIX shell when it needs it.
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests;
