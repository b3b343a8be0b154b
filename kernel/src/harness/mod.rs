//! The in-kernel test framework.
//!
//! Each module lists its tests in a `TESTS: &[KernelTest]` slice; [`SUITES`] collects
//! them. The runner prints `test <module::name> ... ` before a test runs (so a hang
//! leaves the name of the culprit on the console, and the host-side runner reports it)
//! and `ok`, `skipped: why` or `FAILED: why` after, then `N passed, N failed, N skipped`,
//! and ends the run with the matching QEMU exit status. A panic inside a test is reported
//! as that test's failure. A test that cannot check what it claims in this configuration
//! (one CPU, no free 1 GiB block, one NUMA node) returns [`skip!`]'s error instead of
//! passing.

use crate::arch::{self, ExitStatus};
use crate::{sprint, sprintln};
use alloc::string::String;
use core::sync::atomic::{AtomicPtr, Ordering};

/// Why a test did not pass.
#[derive(Debug)]
pub enum TestError {
    /// The test cannot check what it claims in this configuration; not a failure, never a
    /// pass.
    Skipped {
        /// Why (e.g. "needs 2 CPUs").
        reason: String,
    },
    /// A checked condition did not hold.
    Check {
        /// What was expected, with the values seen.
        message: String,
        /// Where the check is.
        file: &'static str,
        /// Line of the check.
        line: u32,
    },
}

impl core::fmt::Display for TestError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            TestError::Check {
                message,
                file,
                line,
            } => write!(f, "{message} ({file}:{line})"),
            TestError::Skipped { reason } => write!(f, "{reason}"),
        }
    }
}

/// What a test returns.
pub type TestResult = Result<(), TestError>;

/// One in-kernel test.
pub struct KernelTest {
    /// `module::name`, as printed.
    pub name: &'static str,
    /// The test body.
    pub run: fn(&TestContext) -> TestResult,
}

/// What a test may use: the seed for its randomness.
pub struct TestContext {
    /// Seed from the kernel options.
    pub seed: u64,
}

/// Fail the test with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr) => {
        $crate::check!($cond, "check failed: {}", stringify!($cond))
    };
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::harness::TestError::Check {
                message: alloc::format!($($fmt)+),
                file: file!(),
                line: line!(),
            });
        }
    };
}

/// Skip the test with a formatted reason: it cannot check what it claims here.
#[macro_export]
macro_rules! skip {
    ($($fmt:tt)+) => {
        return Err($crate::harness::TestError::Skipped {
            reason: alloc::format!($($fmt)+),
        })
    };
}

/// Fail the test unless the two values are equal.
#[macro_export]
macro_rules! check_eq {
    ($left:expr, $right:expr) => {{
        let (l, r) = (&$left, &$right);
        $crate::check!(
            l == r,
            "{} == {} failed: {:?} != {:?}",
            stringify!($left),
            stringify!($right),
            l,
            r
        )
    }};
}

/// Every test suite of the kernel.
const SUITES: &[&[KernelTest]] = &[
    crate::mem::tests::TESTS,
    crate::mem::kernel_space_tests::TESTS,
    crate::arch::timer::tests::TESTS,
    crate::arch::smp::tests::TESTS,
    crate::tlb::tests::TESTS,
    crate::vm::tests::TESTS,
];

/// Name of the running test (for the panic handler); null when none.
static CURRENT: AtomicPtr<&'static str> = AtomicPtr::new(core::ptr::null_mut());

/// The test running now, if any.
pub fn current_test() -> Option<&'static str> {
    let p = CURRENT.load(Ordering::Acquire);
    // SAFETY: CURRENT only ever holds null or a pointer to a `name` field of a
    // `KernelTest` in a static suite, which lives for 'static.
    (!p.is_null()).then(|| unsafe { *p })
}

/// Run every test whose name contains `filter` and none of the comma-separated texts of
/// `skip`, print the summary and end
/// the run.
pub fn run(filter: Option<&str>, skip: Option<&str>, seed: u64) -> ! {
    let ctx = TestContext { seed };
    let (mut passed, mut failed, mut skipped) = (0usize, 0usize, 0usize);
    let tests = SUITES.iter().flat_map(|suite| suite.iter());
    for test in tests.filter(|t| filter.is_none_or(|f| t.name.contains(f))) {
        if skip.is_some_and(|s| s.split(',').any(|s| !s.is_empty() && test.name.contains(s))) {
            skipped += 1;
            continue;
        }
        sprint!("test {} ... ", test.name);
        CURRENT.store((&test.name as *const &str).cast_mut(), Ordering::Release);
        let result = (test.run)(&ctx);
        CURRENT.store(core::ptr::null_mut(), Ordering::Release);
        match result {
            Ok(()) => {
                passed += 1;
                sprintln!("ok");
            }
            Err(TestError::Skipped { reason }) => {
                skipped += 1;
                sprintln!("skipped: {reason}");
            }
            Err(e) => {
                failed += 1;
                sprintln!("FAILED: {e}");
            }
        }
    }
    if skipped > 0 {
        sprintln!("{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        sprintln!("{passed} passed, {failed} failed");
    }
    arch::exit(if failed == 0 {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}
