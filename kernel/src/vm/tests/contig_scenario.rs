//! The contiguity scenario ([`crate::vm::scenario`], the demonstration's) as tests: on a
//! 4 GiB guest with 4 CPUs, seeds 1, 2 and 7 and the run's seed, each its own test, every
//! goal checked; on any other machine of 1 GiB or more, one run for the run's seed at the
//! size the scenario gives that machine. A run that moved nothing by exchange or displaced
//! nothing did not exercise what the goals are about, and fails.

use crate::arch::percpu;
use crate::harness::{TestContext, TestResult};
use crate::vm::scenario::{self, Outcome};
use crate::{check, skip, sprintln};
use alloc::string::String;
use alloc::vec::Vec;
use mm::ops::contig::Phase;

/// CPUs the seed tests need.
const CPUS: usize = 4;

/// Whether this is the machine of the seed tests.
fn full_machine() -> bool {
    scenario::machine().is_big() && percpu::online().len() >= CPUS
}

/// Run the scenario for `seed` and check its outcome.
fn run(seed: u64) -> TestResult {
    let opts = scenario::Options {
        seed,
        damage: false,
    };
    let outcome = scenario::run(opts, &mut ());
    check!(
        outcome.is_ok(),
        "seed {seed}: scenario: {:?}",
        outcome.err()
    );
    let Ok(outcome) = outcome else { return Ok(()) };
    check_outcome(seed, &outcome)
}

fn check_outcome(seed: u64, o: &Outcome) -> TestResult {
    let failed: Vec<String> = o.failed.iter().map(|f| alloc::format!("{f}")).collect();
    if !failed.is_empty() {
        // The reports behind the failure, as the demonstration prints them.
        sprintln!();
        for r in o.vmas.iter().filter_map(|v| v.result.as_ref().ok()) {
            sprintln!("CONTIG {}", r.json(Phase::Before));
            sprintln!("CONTIG {}", r.json(Phase::After));
        }
    }
    check!(
        failed.is_empty(),
        "seed {seed}: {} goals failed: {}",
        failed.len(),
        failed.join("; ")
    );
    check!(
        o.vmas.len() == o.plan.vmas.len(),
        "seed {seed}: {} reports for {} VMAs",
        o.vmas.len(),
        o.plan.vmas.len()
    );
    let reports = o.vmas.iter().filter_map(|v| v.result.as_ref().ok());
    let (exchanged, displaced) =
        reports.fold((0, 0), |(e, d), r| (e + r.exchanged, d + r.displaced));
    check!(
        exchanged > 0 && displaced > 0,
        "seed {seed}: nothing exchanged ({exchanged}) or displaced ({displaced}): memory was not tight"
    );
    check!(o.damage.checked > 0 && o.damage.bad == 0);
    Ok(())
}

/// Seed 1 (the demonstration's default) on a 4 GiB guest with 4 CPUs.
pub(super) fn seed_1(_: &TestContext) -> TestResult {
    if !full_machine() {
        skip!("needs a 4 GiB guest with {CPUS} CPUs");
    }
    run(1)
}

/// Seed 2 on a 4 GiB guest with 4 CPUs.
pub(super) fn seed_2(_: &TestContext) -> TestResult {
    if !full_machine() {
        skip!("needs a 4 GiB guest with {CPUS} CPUs");
    }
    run(2)
}

/// Seed 7 on a 4 GiB guest with 4 CPUs.
pub(super) fn seed_7(_: &TestContext) -> TestResult {
    if !full_machine() {
        skip!("needs a 4 GiB guest with {CPUS} CPUs");
    }
    run(7)
}

/// The run's seed on a 4 GiB guest with 4 CPUs (`./run-qemu.sh test --seed N` repeats
/// one).
pub(super) fn run_seed(ctx: &TestContext) -> TestResult {
    if !full_machine() {
        skip!("needs a 4 GiB guest with {CPUS} CPUs");
    }
    run(ctx.seed)
}

/// The run's seed at the size of a smaller machine (or one with fewer CPUs), from 1 GiB.
pub(super) fn smaller_machine(ctx: &TestContext) -> TestResult {
    if full_machine() {
        skip!("a 4 GiB guest with {CPUS} CPUs: the seed tests run the scenario here");
    }
    let machine = scenario::machine();
    if !machine.is_sized_for() {
        skip!(
            "{} MiB of RAM: the scenario is sized for 1 GiB and more (below, its VMAs find \
             free windows and nothing is exchanged)",
            machine.ram_bytes >> 20
        );
    }
    run(ctx.seed)
}
