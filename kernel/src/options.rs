//! Kernel options: what this run does, read from QEMU's fw_cfg (`run-qemu.sh` passes
//! them) so the same image runs the demonstration, the tests or the benchmarks.
//! On real hardware there are none and the demonstration runs.
//!
//! Syntax: space-separated `key=value` words: `mode=demo|test|bench|overflow|soak`,
//! `filter=TEXT` (tests whose name contains TEXT), `skip=A,B` (leave out tests whose name
//! contains A or B), `noskip=A,B` (tests whose name contains A or B must not skip here),
//! `seed=N`, `quick=1` (benchmarks: each figure once, short), `minutes=N` (how long the
//! soak runs, from 1), and the huge-page daemon's
//! defaults: `thp_daemon=on|off` (started at boot or not), `thp_pages=N` (pages scanned
//! per step), `thp_sleep_ms=N` (sleep between steps), `thp_max_ptes_none=N` (missing
//! pages a 2 MiB range may have and still be collapsed); a tuning the daemon refuses
//! (zero or too many pages, too long a sleep, `thp_max_ptes_none` above 511) is refused
//! here. Hidden, for the harness's
//! own tests: `selftest=KIND` and `apfail=N` (bring-up treats CPU N, an application
//! processor, as one that never answers). Anything else (an unknown key or mode, a word without `=`, a key given
//! twice, a seed that is not a number) is refused: the kernel says why and the run ends
//! as a failure.

use crate::arch::fw_cfg;
use crate::vm::daemon::Config as ThpConfig;
use mm::ops::huge::daemon::TuningError;

const MAX_LEN: usize = 256;

/// What the run does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Boot report and the demonstration.
    #[default]
    Demo,
    /// The in-kernel tests.
    Test,
    /// The in-kernel benchmarks.
    Bench,
    /// Deliberately overflow the kernel stack to show the guard page catches it.
    Overflow,
    /// The soak: writers against a mixed stream of moves for `minutes=` minutes.
    Soak,
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

    /// `text` as the options (cut at [`MAX_LEN`] bytes, as a longer fw_cfg file is), for
    /// the tests of [`parse`](Self::parse).
    pub fn from_text(text: &str) -> Options {
        let mut raw = [0u8; MAX_LEN];
        let len = text.len().min(MAX_LEN);
        raw[..len].copy_from_slice(&text.as_bytes()[..len]);
        Options { raw, len }
    }

    /// The options as given.
    pub fn raw(&self) -> &str {
        core::str::from_utf8(&self.raw[..self.len]).unwrap_or("<not utf-8>")
    }

    /// Check every word and read the options: an unknown key, an unknown mode, a value
    /// that does not parse or a key given twice is refused, never ignored.
    pub fn parse(&self) -> Result<Parsed<'_>, OptionError<'_>> {
        let text = core::str::from_utf8(&self.raw[..self.len]).map_err(|_| OptionError::NotUtf8)?;
        let mut parsed = Parsed {
            seed: 1,
            minutes: 1,
            ..Parsed::default()
        };
        let mut seen: [bool; KEYS.len()] = [false; KEYS.len()];
        for word in text.split_ascii_whitespace() {
            let (key, value) = word.split_once('=').ok_or(OptionError::NotKeyValue(word))?;
            let index = KEYS
                .iter()
                .position(|&k| k == key)
                .ok_or(OptionError::UnknownKey(key))?;
            if core::mem::replace(&mut seen[index], true) {
                return Err(OptionError::Repeated(key));
            }
            match key {
                "mode" => {
                    parsed.mode = Mode::from_name(value).ok_or(OptionError::UnknownMode(value))?
                }
                "filter" => parsed.filter = Some(value),
                "skip" => parsed.skip = Some(value),
                "noskip" => parsed.noskip = Some(value),
                "seed" => parsed.seed = value.parse().map_err(|_| OptionError::BadSeed(value))?,
                "apfail" => {
                    parsed.apfail = match value.parse() {
                        Ok(0) | Err(_) => return Err(OptionError::BadApFail(value)),
                        Ok(cpu) => Some(cpu),
                    }
                }
                "quick" => {
                    parsed.quick = match value {
                        "1" => true,
                        "0" => false,
                        _ => return Err(OptionError::BadQuick(value)),
                    }
                }
                "minutes" => {
                    parsed.minutes = match value.parse() {
                        Ok(0) | Err(_) => return Err(OptionError::BadNumber(key, value)),
                        Ok(n) => n,
                    }
                }
                "thp_daemon" => {
                    parsed.thp.on = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(OptionError::BadSwitch(key, value)),
                    }
                }
                "thp_pages" => parsed.thp.tuning.pages_per_step = number(key, value)?,
                "thp_sleep_ms" => parsed.thp.tuning.sleep_ms = number(key, value)?,
                "thp_max_ptes_none" => {
                    parsed.thp.tuning.max_ptes_none = u32::try_from(number(key, value)?)
                        .map_err(|_| OptionError::BadNumber(key, value))?
                }
                _ => {
                    parsed.selftest = Some(
                        SelfTest::from_name(value).ok_or(OptionError::UnknownSelfTest(value))?,
                    )
                }
            }
        }
        parsed.thp.tuning.check().map_err(OptionError::BadTuning)?;
        match (parsed.selftest, parsed.mode) {
            (Some(SelfTest::Corrupt), Mode::Demo) | (None, _) => Ok(parsed),
            (Some(SelfTest::Corrupt), _) => Err(OptionError::SelfTestMode("demo")),
            (Some(_), Mode::Test) => Ok(parsed),
            (Some(_), _) => Err(OptionError::SelfTestMode("test")),
        }
    }
}

/// The whole number `value` of option `key`.
fn number<'a>(key: &'a str, value: &'a str) -> Result<u64, OptionError<'a>> {
    value
        .parse()
        .map_err(|_| OptionError::BadNumber(key, value))
}

/// Every option key (`selftest` and `apfail` are for the harness's own tests and not
/// advertised).
const KEYS: [&str; 13] = [
    "mode",
    "filter",
    "skip",
    "noskip",
    "seed",
    "quick",
    "minutes",
    "thp_daemon",
    "thp_pages",
    "thp_sleep_ms",
    "thp_max_ptes_none",
    "selftest",
    "apfail",
];

impl Mode {
    fn from_name(name: &str) -> Option<Mode> {
        match name {
            "demo" => Some(Mode::Demo),
            "test" => Some(Mode::Test),
            "bench" => Some(Mode::Bench),
            "overflow" => Some(Mode::Overflow),
            "soak" => Some(Mode::Soak),
            _ => None,
        }
    }
}

/// A deliberately broken run, for the host's tests of the harness (`selftest=KIND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfTest {
    /// In `mode=test`: only the harness's own tests, one of which fails a check.
    Fail,
    /// In `mode=test`: one of them panics.
    Panic,
    /// In `mode=test`: one of them never returns.
    Hang,
    /// In `mode=test`: one of them returns while work it started still runs on another
    /// CPU.
    Straggler,
    /// In `mode=test`: one passes and one skips, nothing fails.
    Skip,
    /// In `mode=demo`: the demonstration damages the page it checks.
    Corrupt,
}

impl SelfTest {
    fn from_name(name: &str) -> Option<SelfTest> {
        match name {
            "fail" => Some(SelfTest::Fail),
            "panic" => Some(SelfTest::Panic),
            "hang" => Some(SelfTest::Hang),
            "straggler" => Some(SelfTest::Straggler),
            "skip" => Some(SelfTest::Skip),
            "corrupt" => Some(SelfTest::Corrupt),
            _ => None,
        }
    }
}

/// The options of this run, checked.
#[derive(Debug, Default)]
pub struct Parsed<'a> {
    /// What the run does (default: the demonstration).
    pub mode: Mode,
    /// Only tests whose name contains this text run.
    pub filter: Option<&'a str>,
    /// Tests whose name contains one of these comma-separated texts are left out (not
    /// selected; they are not counted as skipped).
    pub skip: Option<&'a str>,
    /// Tests whose name contains one of these comma-separated texts must not skip here: a
    /// skip of one of them counts as a failure.
    pub noskip: Option<&'a str>,
    /// Seed for randomised tests (default 1).
    pub seed: u64,
    /// Benchmarks measure each figure once, on short runs.
    pub quick: bool,
    /// How long the soak runs, in minutes (at least 1; default 1).
    pub minutes: u64,
    /// The huge-page daemon's defaults.
    pub thp: ThpConfig,
    /// A deliberately broken run (the harness's own tests).
    pub selftest: Option<SelfTest>,
    /// The application processor (CPU index) that bring-up must treat as never
    /// answering: it is sent no INIT/SIPI, so the start timeout runs (the harness's own
    /// tests).
    pub apfail: Option<u32>,
}

/// Why the options were refused.
#[derive(Debug, PartialEq, Eq)]
pub enum OptionError<'a> {
    /// The option bytes are not UTF-8.
    NotUtf8,
    /// A word without `=`.
    NotKeyValue(&'a str),
    /// A key this kernel does not know.
    UnknownKey(&'a str),
    /// A key given more than once.
    Repeated(&'a str),
    /// A `mode=` value this kernel does not know.
    UnknownMode(&'a str),
    /// A `seed=` that is not a whole number.
    BadSeed(&'a str),
    /// `quick=` is neither 1 nor 0.
    BadQuick(&'a str),
    /// An on/off option (the key) is neither `on` nor `off` (the value).
    BadSwitch(&'a str, &'a str),
    /// A numeric option (the key) whose value is not a whole number in range.
    BadNumber(&'a str, &'a str),
    /// The huge-page daemon refuses the tuning the `thp_` options give.
    BadTuning(TuningError),
    /// A `selftest=` value this kernel does not know.
    UnknownSelfTest(&'a str),
    /// `apfail=` is not the index of an application processor (a whole number from 1).
    BadApFail(&'a str),
    /// This `selftest=` value needs another mode (the one given).
    SelfTestMode(&'static str),
}

impl core::fmt::Display for OptionError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            OptionError::NotUtf8 => write!(f, "the options are not UTF-8"),
            OptionError::NotKeyValue(word) => write!(f, "{word:?} is not key=value"),
            OptionError::UnknownKey(key) => write!(
                f,
                "unknown option {key:?} (known: mode, filter, skip, noskip, seed, quick, minutes, \
                 thp_daemon, thp_pages, thp_sleep_ms, thp_max_ptes_none)"
            ),
            OptionError::Repeated(key) => write!(f, "option {key:?} given twice"),
            OptionError::UnknownMode(mode) => write!(
                f,
                "unknown mode {mode:?} (known: demo, test, bench, overflow, soak)"
            ),
            OptionError::BadSeed(seed) => write!(f, "seed {seed:?} is not a whole number"),
            OptionError::BadQuick(quick) => write!(f, "quick={quick:?}: want 1 or 0"),
            OptionError::BadSwitch(key, value) => write!(f, "{key}={value:?}: want on or off"),
            OptionError::BadNumber(key, value) => {
                write!(f, "{key}={value:?}: want a whole number in range")
            }
            OptionError::BadTuning(e) => write!(f, "huge-page daemon tuning refused: {e}"),
            OptionError::UnknownSelfTest(kind) => write!(f, "unknown selftest {kind:?}"),
            OptionError::BadApFail(cpu) => {
                write!(
                    f,
                    "apfail={cpu:?}: want the index of an application processor (1 or more)"
                )
            }
            OptionError::SelfTestMode(mode) => write!(f, "this selftest needs mode={mode}"),
        }
    }
}

pub mod tests;
