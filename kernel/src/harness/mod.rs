//! The in-kernel test framework.
//!
//! Each module lists its tests in a `TESTS: &[KernelTest]` slice; [`SUITES`] collects
//! them. The runner first prints `tests: N selected, M not selected` (`filter=` and
//! `skip=` choose; a test left out is not run and not counted below), then for each test
//! `test <module::name> ... ` before it runs (so a hang leaves the name of the culprit on
//! the console, and the host-side runner reports it) and `ok`, `skipped: why` or
//! `FAILED: why` after, then the memory manager's event counters (`VMSTAT {json}`), then
//! always `N passed, N failed, N skipped`, and ends the run
//! with the matching QEMU exit status: failure when a test failed or none was selected.
//!
//! A panic inside a test is reported as that test's failure. A test that cannot check
//! what it claims in this configuration (one CPU, no free 1 GiB block, one NUMA node)
//! returns [`skip!`]'s error instead of passing; `noskip=` names tests that must not skip
//! in a configuration (a skip of one of them is a failure). After each test every other
//! CPU must answer within [`HELPER_TIMEOUT_MS`]: a test that returns while work it
//! started still runs elsewhere fails, and the run stops there, so the next test is not
//! blamed for it.

mod selftest;

use crate::arch::percpu;
use crate::arch::{self, ExitStatus};
use crate::options::Parsed;
use crate::smp;
use crate::{sprint, sprintln};
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, Ordering};

/// How long every other CPU has, after a test, to answer (to show the test left nothing
/// running there).
pub const HELPER_TIMEOUT_MS: u64 = 5_000;

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

/// The value inside `Ok`, or fail the test naming the expression and the error.
#[macro_export]
macro_rules! check_ok {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(e) => {
                return Err($crate::harness::TestError::Check {
                    message: alloc::format!("{} failed: {:?}", stringify!($result), e),
                    file: file!(),
                    line: line!(),
                })
            }
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
    crate::options::tests::TESTS,
    crate::smp::tests::TESTS,
    crate::tlb::tests::TESTS,
    crate::vm::tests::TESTS,
    crate::vm::tests::huge::TESTS,
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

/// Whether `name` contains one of the comma-separated texts of `list`.
fn listed(list: Option<&str>, name: &str) -> bool {
    list.is_some_and(|l| l.split(',').any(|t| !t.is_empty() && name.contains(t)))
}

/// The other online CPUs that do not run a no-op within [`HELPER_TIMEOUT_MS`]: they are
/// still busy with work a test queued.
fn busy_cpus() -> Vec<u32> {
    let me = percpu::cpu_index();
    let pending: Vec<(u32, Option<smp::Pending<()>>)> = percpu::online()
        .iter()
        .filter(|&cpu| cpu != me)
        .map(|cpu| (cpu, smp::run_on(cpu, || ()).ok()))
        .collect();
    let deadline = arch::timer::Deadline::after_ms(HELPER_TIMEOUT_MS);
    pending
        .into_iter()
        .filter(|(_, p)| {
            p.as_ref().is_none_or(|p| {
                while !p.is_done() && !deadline.expired() {
                    smp::serve_one();
                    core::hint::spin_loop();
                }
                !p.is_done()
            })
        })
        .map(|(cpu, _)| cpu)
        .collect()
}

/// How one test ended, as counted.
enum Outcome {
    Passed,
    Skipped(String),
    Failed(String),
}

/// Run the selected tests (see the module documentation), print the summary and end the
/// run. `opts.selftest` runs the harness's own deliberately broken tests instead.
pub fn run(opts: &Parsed) -> ! {
    let ctx = TestContext { seed: opts.seed };
    let selftests = opts.selftest.map(selftest::suite);
    let suites: &[&[KernelTest]] = match &selftests {
        Some(suite) => core::slice::from_ref(suite),
        None => SUITES,
    };
    let all = || suites.iter().flat_map(|suite| suite.iter());
    let selected = |t: &&KernelTest| {
        opts.filter.is_none_or(|f| t.name.contains(f)) && !listed(opts.skip, t.name)
    };
    let total = all().count();
    let chosen = all().filter(selected).count();
    sprintln!(
        "tests: {chosen} selected, {} not selected (filter={} skip={})",
        total - chosen,
        opts.filter.unwrap_or("-"),
        opts.skip.unwrap_or("-")
    );
    let (mut passed, mut failed, mut skipped) = (0usize, 0usize, 0usize);
    let mut stopped = None;
    for test in all().filter(selected) {
        sprint!("test {} ... ", test.name);
        CURRENT.store((&test.name as *const &str).cast_mut(), Ordering::Release);
        let result = (test.run)(&ctx);
        CURRENT.store(core::ptr::null_mut(), Ordering::Release);
        let mut outcome = match result {
            Ok(()) => Outcome::Passed,
            Err(TestError::Skipped { reason }) if listed(opts.noskip, test.name) => {
                Outcome::Failed(alloc::format!(
                    "skipped where noskip= requires it to run: {reason}"
                ))
            }
            Err(TestError::Skipped { reason }) => Outcome::Skipped(reason),
            Err(e) => Outcome::Failed(alloc::format!("{e}")),
        };
        let busy = busy_cpus();
        if !busy.is_empty() {
            let left = alloc::format!(
                "work it started still runs on CPU {busy:?} {HELPER_TIMEOUT_MS} ms after it \
                 returned"
            );
            outcome = Outcome::Failed(match outcome {
                Outcome::Failed(why) => alloc::format!("{why}; {left}"),
                _ => left,
            });
            stopped = Some(test.name);
        }
        match outcome {
            Outcome::Passed => {
                passed += 1;
                sprintln!("ok");
            }
            Outcome::Skipped(reason) => {
                skipped += 1;
                sprintln!("skipped: {reason}");
            }
            Outcome::Failed(why) => {
                failed += 1;
                sprintln!("FAILED: {why}");
            }
        }
        if stopped.is_some() {
            break;
        }
    }
    if let Some(name) = stopped {
        sprintln!("stopping the run: {name} left other CPUs busy");
    }
    if chosen == 0 {
        sprintln!("no test selected: nothing to run is a failure");
    }
    if let Some(mm) = crate::vm::mm() {
        sprintln!("VMSTAT {}", mm.vmstat().json());
    }
    sprintln!("{passed} passed, {failed} failed, {skipped} skipped");
    arch::exit(if failed == 0 && chosen > 0 {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}
