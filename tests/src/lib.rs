//! Host-side tooling for the kernel: boot its BIOS or UEFI disk image in QEMU, capture
//! the serial console, enforce a timeout and decode how the run ended.
//!
//! - [`QemuConfig`] says what to boot (firmware, CPUs, memory, kernel options, timeout);
//!   [`run`] boots it and returns a [`RunResult`]: the serial output and a [`RunStatus`]
//!   (passed, failed with QEMU's exit status, or timed out naming the test that hung).
//! - [`output`] parses what the kernel prints: test lines (`test <name> ... ok` /
//!   `... skipped: why` / `... FAILED: why`), the summary (`N passed, N failed, N skipped`)
//!   and `BENCH {json}` lines; [`RunResult::test_problems`] says why a test run did not
//!   pass (a failed test, no clean exit, no summary, no test at all).
//! - [`bench_check`] checks that a quick benchmark run printed every expected `BENCH`
//!   line once, each parsing (the `bench-check` binary; `run-qemu.sh test` runs it).
//! - [`physmap`] reads the kernel's picture of physical memory (`PHYSMAP {json}` lines)
//!   and [`picture`] draws it as a PNG, one band per phase (`qemu-run` writes it to
//!   `target/demo/physmap.png` when a run printed any).
//! - [`expect`] holds the assertions the boot tests (`tests/boot.rs`) use; each prints
//!   the run's output when it fails.
//!
//! The `qemu-run` binary (`src/bin/qemu-run/main.rs`) is the command-line face of [`run`];
//! `run-qemu.sh` calls it.
//!
//! Exit convention: the kernel writes QEMU's isa-debug-exit port, so QEMU exits with 33
//! for success and 35 for failure. Any other status (0 after a triple fault with
//! `-no-reboot`, 1 for a QEMU error, a signal) is a failure too.

pub mod bench_check;
mod config;
mod error;
pub mod expect;
pub mod output;
pub mod physmap;
pub mod picture;
mod runner;
mod sys;

pub use config::{default_images_dir, Firmware, MemSize, QemuConfig, DEFAULT_TIMEOUT};
pub use error::Error;
pub use output::{parse, Bench, Report, Summary, TestOutcome, TestResult};
pub use runner::{
    qemu_args, run, RunResult, RunStatus, TestRunProblem, QEMU_EXIT_FAILURE, QEMU_EXIT_SUCCESS,
};
pub use sys::{install_interrupt_handler, interrupted};
