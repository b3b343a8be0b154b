//! Kernel options: what this run does, read from QEMU's fw_cfg (`run-qemu.sh` passes
//! them) so the same image runs the demonstration, the tests or the benchmarks.
//! On real hardware there are none and the demonstration runs.
//!
//! Syntax: space-separated `key=value` words: `mode=demo|test|bench|overflow`,
//! `filter=TEXT` (tests whose name contains TEXT), `skip=A,B` (leave out tests whose name
//! contains A or B), `seed=N`.

use crate::arch::fw_cfg;

const MAX_LEN: usize = 256;

/// What the run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Boot report and the demonstration.
    Demo,
    /// The in-kernel tests.
    Test,
    /// The in-kernel benchmarks.
    Bench,
    /// Deliberately overflow the kernel stack to show the guard page catches it.
    Overflow,
}

/// The parsed kernel options.
pub struct Options {
    raw: [u8; MAX_LEN],
    len: usize,
}

impl Options {
    /// Read the options from QEMU's fw_cfg, else from the boot image's ramdisk (see
    /// [`crate::arch::baked`]; only once memory setup has copied them out); empty when
    /// neither has any.
    pub fn load() -> Options {
        let mut raw = [0u8; MAX_LEN];
        let len = fw_cfg::read_file(fw_cfg::CMDLINE_FILE, &mut raw)
            .or_else(|| crate::arch::baked::read(&mut raw))
            .unwrap_or(0);
        let len = raw[..len].iter().position(|&b| b == 0).unwrap_or(len);
        Options { raw, len }
    }

    /// The options as given.
    pub fn raw(&self) -> &str {
        core::str::from_utf8(&self.raw[..self.len]).unwrap_or("<not utf-8>")
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.raw().split_ascii_whitespace().find_map(|word| {
            let (k, v) = word.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    /// The mode; unknown values fall back to the demonstration with a warning.
    pub fn mode(&self) -> Mode {
        match self.get("mode") {
            None | Some("demo") => Mode::Demo,
            Some("test") => Mode::Test,
            Some("bench") => Mode::Bench,
            Some("overflow") => Mode::Overflow,
            Some(other) => {
                log::warn!("unknown mode {other:?}; running the demonstration");
                Mode::Demo
            }
        }
    }

    /// Only tests whose name contains this text run.
    pub fn filter(&self) -> Option<&str> {
        self.get("filter")
    }

    /// Tests whose name contains one of these comma-separated texts are skipped (counted
    /// as skipped).
    pub fn skip(&self) -> Option<&str> {
        self.get("skip")
    }

    /// Seed for randomised tests (default 1).
    pub fn seed(&self) -> u64 {
        self.get("seed").and_then(|s| s.parse().ok()).unwrap_or(1)
    }
}
