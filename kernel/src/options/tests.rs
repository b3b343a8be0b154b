//! In-kernel tests of the option parser: each kind of bad option is refused with the
//! reason the kernel prints, and good options read as given. (The boot tests check, for
//! two of them, that a refusal ends the run as a failure before anything runs.)

use super::{Mode, Options};
use crate::check;
use crate::harness::{KernelTest, TestContext, TestResult};
use alloc::format;

pub const TESTS: &[KernelTest] = &[
    KernelTest {
        name: "options::every_bad_option_is_refused_with_its_reason",
        run: bad_options_are_refused,
    },
    KernelTest {
        name: "options::good_options_read_as_given",
        run: good_options_read_as_given,
    },
];

fn bad_options_are_refused(_: &TestContext) -> TestResult {
    for (text, why) in [
        ("mode=typo", "unknown mode \"typo\""),
        ("mode=demo frobnicate=1", "unknown option \"frobnicate\""),
        ("mode=test seed", "\"seed\" is not key=value"),
        ("seed=1 mode=test seed=2", "option \"seed\" given twice"),
        ("mode=test seed=x", "seed \"x\" is not a whole number"),
        ("mode=bench quick=2", "quick=\"2\": want 1 or 0"),
        (
            "mode=soak minutes=0",
            "minutes=\"0\": want a whole number in range",
        ),
        (
            "mode=test apfail=0",
            "apfail=\"0\": want the index of an application processor",
        ),
        (
            "mode=test thp_daemon=maybe",
            "thp_daemon=\"maybe\": want on or off",
        ),
        (
            "mode=test thp_sleep_ms=x",
            "thp_sleep_ms=\"x\": want a whole number in range",
        ),
        (
            "mode=test thp_max_ptes_none=99999999999",
            "thp_max_ptes_none=\"99999999999\": want a whole number in range",
        ),
        (
            "mode=test thp_pages=0",
            "huge-page daemon tuning refused: zero pages per step",
        ),
        ("mode=test selftest=nope", "unknown selftest \"nope\""),
        ("mode=bench selftest=fail", "this selftest needs mode=test"),
    ] {
        let options = Options::from_text(text);
        match options.parse() {
            Ok(_) => check!(false, "{text:?} was accepted"),
            Err(e) => {
                let said = format!("{e}");
                check!(said.contains(why), "{text:?}: {said:?}, want {why:?}");
            }
        }
    }
    Ok(())
}

fn good_options_read_as_given(_: &TestContext) -> TestResult {
    let options = Options::from_text("mode=bench seed=42 quick=1 filter=vm.contig minutes=3");
    let parsed = options.parse();
    check!(parsed.is_ok(), "refused: {:?}", parsed.as_ref().err());
    if let Ok(p) = parsed {
        check!(p.mode == Mode::Bench, "mode {:?}", p.mode);
        check!(
            p.seed == 42 && p.quick && p.minutes == 3,
            "seed, quick, minutes"
        );
        check!(p.filter == Some("vm.contig"), "filter {:?}", p.filter);
        check!(p.skip.is_none() && p.selftest.is_none(), "nothing else set");
    }
    // No options at all: the demonstration, seed 1.
    let empty = Options::from_text("");
    let parsed = empty.parse();
    check!(
        parsed
            .as_ref()
            .is_ok_and(|p| p.mode == Mode::Demo && p.seed == 1),
        "empty options: {:?}",
        parsed.as_ref().err()
    );
    Ok(())
}
