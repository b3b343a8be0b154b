//! The harness's own tests: deliberately broken tests, run only with the hidden option
//! `selftest=KIND` (never part of the normal suites), so the host can check that each
//! way a test can go wrong makes the run fail and names the test.

use super::{KernelTest, TestContext, TestResult};
use crate::arch::percpu;
use crate::options::SelfTest;
use crate::smp;
use crate::{check, skip};

const PASSES: KernelTest = KernelTest {
    name: "selftest::passes",
    run: passes,
};

const PASSES_AFTER: KernelTest = KernelTest {
    name: "selftest::passes_after",
    run: passes,
};

/// The suite for `kind`: a passing test, the broken one, another passing test.
pub fn suite(kind: SelfTest) -> &'static [KernelTest] {
    match kind {
        SelfTest::Fail => &[
            PASSES,
            KernelTest {
                name: "selftest::fails",
                run: fails,
            },
            PASSES_AFTER,
        ],
        SelfTest::Panic => &[
            PASSES,
            KernelTest {
                name: "selftest::panics",
                run: panics,
            },
            PASSES_AFTER,
        ],
        SelfTest::Hang => &[
            PASSES,
            KernelTest {
                name: "selftest::hangs",
                run: hangs,
            },
            PASSES_AFTER,
        ],
        SelfTest::Straggler => &[
            PASSES,
            KernelTest {
                name: "selftest::leaves_work_running",
                run: leaves_work_running,
            },
            PASSES_AFTER,
        ],
        SelfTest::Skip => &[
            PASSES,
            KernelTest {
                name: "selftest::skips",
                run: skips,
            },
            PASSES_AFTER,
        ],
        SelfTest::Corrupt => &[],
    }
}

fn passes(_: &TestContext) -> TestResult {
    Ok(())
}

fn fails(_: &TestContext) -> TestResult {
    check!(1 + 1 == 3, "this self-test fails on purpose");
    Ok(())
}

fn panics(_: &TestContext) -> TestResult {
    panic!("this self-test panics on purpose")
}

fn hangs(_: &TestContext) -> TestResult {
    loop {
        core::hint::spin_loop();
    }
}

fn spin_forever() {
    loop {
        core::hint::spin_loop();
    }
}

fn skips(_: &TestContext) -> TestResult {
    skip!("this self-test skips on purpose")
}

/// Starts a never-ending loop on another CPU and returns as if it passed.
fn leaves_work_running(_: &TestContext) -> TestResult {
    let me = percpu::cpu_index();
    let Some(other) = percpu::online().iter().find(|&c| c != me) else {
        skip!("needs 2 CPUs");
    };
    check!(
        smp::run_on(other, spin_forever).is_ok(),
        "run_on({other}) refused"
    );
    Ok(())
}
