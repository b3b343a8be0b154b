//! `qemu-run`: boot the kernel image in QEMU, stream its serial console, and exit with
//! a status that says how the run ended. `run-qemu.sh` calls it.
//!
//! ```text
//! qemu-run [--uefi] [--smp N] [--mem SIZE] [--gdb] [--opts "mode=test seed=3"]
//!          [--timeout SECS] [--test-timeout SECS] [--images DIR] [--qemu-arg ARG]...
//!          [--quiet] [--tests]
//!          [--picture PATH]
//! ```
//!
//! Exit status: 0 the kernel reported success; 1 it did not (failure, crash, QEMU
//! error), or its `PHYSMAP` lines did not make a picture; 2 bad arguments or QEMU could
//! not start; 124 timeout (after printing `TIMEOUT: <test or boot> hung after N s`);
//! 128+signal when interrupted.
//!
//! When the kernel printed its picture of physical memory (`PHYSMAP {json}` lines, the
//! demo does), the run ends by drawing it as a PNG ([`boot_tests::picture`]) at `--picture
//! PATH`, by default `<repo>/target/demo/physmap.png`, and printing `picture: PATH`.
//!
//! With `--tests` the run is one of the in-kernel tests and passes only when, besides the
//! kernel's success exit, the output has its summary line, that line counts at least
//! one test and agrees with the test lines, and no test printed `FAILED`; each problem is
//! printed as `qemu-run: <config>: FAILED: <why>` (failed tests by name), and skipped
//! tests are listed with their reasons.

use boot_tests::picture;
use boot_tests::{
    default_images_dir, install_interrupt_handler, run, Error, Firmware, MemSize, QemuConfig,
    RunResult, RunStatus, TestRunProblem, DEFAULT_TIMEOUT,
};
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How many of the slowest tests the closing line names.
const SLOWEST_SHOWN: usize = 5;

const USAGE: &str = "\
usage: qemu-run [options]
  --uefi            boot uefi.img through OVMF (default: bios.img, legacy BIOS)
  --smp N           number of CPUs (default 4)
  --mem SIZE        guest memory, e.g. 256M, 4G, 8G (default 4G)
  --opts TEXT       kernel options, e.g. \"mode=test seed=3 filter=buddy\"
  --timeout SECS    kill QEMU after SECS seconds (default 600)
  --test-timeout SECS  also kill it when one in-kernel test has run SECS seconds (default: none)
  --images DIR      directory with bios.img and uefi.img (default $MMK_IMAGES or <repo>/target/images)
  --qemu-arg ARG    pass ARG to QEMU as it is (repeatable), e.g. --qemu-arg -accel --qemu-arg tcg,thread=single
  --gdb             start halted with a GDB stub on :1234 (no timeout)
  --quiet           do not stream the serial console
  --tests           an in-kernel test run: also require the summary line, at least one test, no FAILED
  --picture PATH    where the PNG of the kernel's PHYSMAP lines goes, if it prints any (default <repo>/target/demo/physmap.png)
  -h, --help        this text
exit status: 0 success, 1 failure, 2 usage or setup error, 124 timeout";

/// What went wrong with the command line.
#[derive(Debug)]
enum CliError {
    /// An option that does not exist.
    UnknownOption(String),
    /// An option given without its value.
    MissingValue(&'static str),
    /// A value that does not parse.
    InvalidValue {
        option: &'static str,
        value: String,
        reason: String,
    },
    /// A bad memory size or CPU count, or a run that cannot start.
    Runner(Error),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::UnknownOption(option) => write!(f, "unknown option {option:?}"),
            CliError::MissingValue(option) => write!(f, "{option} needs a value"),
            CliError::InvalidValue {
                option,
                value,
                reason,
            } => write!(f, "{option} {value:?}: {reason}"),
            CliError::Runner(error) => write!(f, "{error}"),
        }
    }
}

impl From<Error> for CliError {
    fn from(error: Error) -> Self {
        CliError::Runner(error)
    }
}

/// `text`, the value of `option`, as a whole number of seconds above 0.
fn seconds(option: &'static str, text: String) -> Result<Duration, CliError> {
    match text.trim().parse::<u64>() {
        Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(CliError::InvalidValue {
            option,
            value: text,
            reason: "expected a whole number of seconds above 0".to_owned(),
        }),
    }
}

/// The parsed command line.
enum Command {
    Help,
    Run {
        config: QemuConfig,
        tests: bool,
        picture: PathBuf,
    },
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, CliError> {
    let mut config = QemuConfig::new()
        .images(default_images_dir())
        .timeout(DEFAULT_TIMEOUT)
        .stream(true);
    let mut tests = false;
    let mut picture = picture::default_path();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Accept both `--smp 4` and `--smp=4`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |option: &'static str| -> Result<String, CliError> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(CliError::MissingValue(option))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--uefi" => config.firmware = Firmware::Uefi,
            "--bios" => config.firmware = Firmware::Bios,
            "--gdb" => config.gdb = true,
            "--quiet" => config.stream = false,
            "--tests" => tests = true,
            "--smp" => {
                let text = value("--smp")?;
                config.smp = match text.trim().parse::<u32>() {
                    Ok(n @ 1..=255) => n,
                    _ => return Err(Error::InvalidSmp(text).into()),
                };
            }
            "--mem" => config.mem = value("--mem")?.parse::<MemSize>()?,
            "--opts" => config.options = value("--opts")?,
            "--qemu-arg" => config.extra_args.push(value("--qemu-arg")?),
            "--images" => config.images = PathBuf::from(value("--images")?),
            "--picture" => picture = PathBuf::from(value("--picture")?),
            "--timeout" => config.timeout = seconds("--timeout", value("--timeout")?)?,
            "--test-timeout" => {
                config.test_timeout = Some(seconds("--test-timeout", value("--test-timeout")?)?)
            }
            _ => return Err(CliError::UnknownOption(arg)),
        }
    }
    Ok(Command::Run {
        config,
        tests,
        picture,
    })
}

fn main() -> ExitCode {
    let (config, tests, picture_path) = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run {
            config,
            tests,
            picture,
        }) => (config, tests, picture),
        Err(error) => {
            eprintln!("qemu-run: {error} (qemu-run --help lists the options)");
            return ExitCode::from(2);
        }
    };
    install_interrupt_handler();
    if config.gdb {
        eprintln!(
            "qemu-run: QEMU starts halted with a GDB stub on localhost:1234 ({}, no timeout).\n\
             qemu-run: in another terminal, from the repository root:\n    \
             gdb kernel/target/x86_64-target/release/kernel -ex 'target remote :1234'\n\
             qemu-run: then `continue`; Ctrl-C here stops QEMU.",
            config.label()
        );
    }
    let result = match run(&config) {
        Ok(result) => result,
        Err(error) => {
            eprintln!("qemu-run: {error}");
            return ExitCode::from(2);
        }
    };
    // The status line starts a line of its own even after a partial `test x ... `.
    if config.stream && !result.output.is_empty() && !result.output.ends_with('\n') {
        println!();
    }
    let _ = std::io::stdout().flush();
    print_slowest_tests(&result);
    let problems = if tests {
        report_tests(&result)
    } else {
        Vec::new()
    };
    let drawn = draw_picture(&result, &picture_path);
    match &result.status {
        RunStatus::Passed if !problems.is_empty() || !drawn => ExitCode::from(1),
        RunStatus::Passed => {
            eprintln!("qemu-run: {}: {}", config.label(), result.describe());
            ExitCode::SUCCESS
        }
        RunStatus::TimedOut { .. } => {
            eprintln!("{}", result.describe());
            if !config.stream {
                eprintln!("{}", result.output);
            }
            ExitCode::from(124)
        }
        RunStatus::Interrupted(signal) => {
            eprintln!("qemu-run: {}", result.describe());
            ExitCode::from(u8::try_from(128 + signal).unwrap_or(130))
        }
        RunStatus::Failed(_) => {
            eprintln!(
                "qemu-run: {}: FAILED: {}",
                config.label(),
                result.describe()
            );
            if !config.stream && !result.stderr.is_empty() {
                eprintln!("{}", result.stderr.trim_end());
            }
            ExitCode::from(1)
        }
    }
}

/// For a test run: list the skipped tests, print each problem but the exit status (the
/// caller describes that) and return all problems.
fn report_tests(result: &RunResult) -> Vec<TestRunProblem> {
    let label = result.config.label();
    for (name, why) in result.report().skips() {
        eprintln!("qemu-run: {label}: skipped {name}: {why}");
    }
    let problems = result.test_problems();
    for problem in &problems {
        match problem {
            TestRunProblem::NotCleanExit(_) => {}
            TestRunProblem::FailedTests(tests) => {
                for (name, why) in tests {
                    eprintln!("qemu-run: {label}: FAILED: {name}: {why}");
                }
            }
            problem => eprintln!("qemu-run: {label}: FAILED: {problem}"),
        }
    }
    problems
}

/// Draw the run's `PHYSMAP` lines, if any, at `path` and say where; false when they do
/// not make a picture or it cannot be written.
fn draw_picture(result: &RunResult, path: &std::path::Path) -> bool {
    match picture::write(&result.output, path) {
        Ok(0) => true,
        Ok(_) => {
            println!("picture: {}", path.display());
            true
        }
        Err(error) => {
            eprintln!(
                "qemu-run: {}: FAILED: no picture of physical memory: {error}",
                result.config.label()
            );
            false
        }
    }
}

/// The few slowest tests, so the time budget of a test run is easy to watch.
fn print_slowest_tests(result: &RunResult) {
    let mut durations = result.test_durations();
    if durations.is_empty() {
        return;
    }
    durations.sort_by_key(|(_, took)| std::cmp::Reverse(*took));
    let slowest: Vec<String> = durations
        .iter()
        .take(SLOWEST_SHOWN)
        .map(|(name, took)| format!("{name} {:.1} s", took.as_secs_f64()))
        .collect();
    eprintln!("qemu-run: slowest tests: {}", slowest.join(", "));
}

#[cfg(test)]
mod tests;
