//! In-kernel tests of CPU bring-up, IPIs, the timers and work on chosen CPUs.
//!
//! Every wait is bounded: a CPU that never answers fails the test instead of hanging it.

use super::{broadcast, madt_apic_ids, run_on, run_on_set, silenced_ap, stack_guard, SmpError};
use crate::arch::apic::{self, ApicError, PING_VECTOR};
use crate::arch::percpu::{self, CpuSet, MAX_CPUS};
use crate::arch::timer::{self, Deadline};
use crate::arch::{guard, probe};
use crate::harness::{KernelTest, TestContext, TestResult};
use crate::{check, check_eq, check_ok, skip};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

/// How long a test waits for another CPU before failing.
const TIMEOUT_MS: u64 = 5_000;

/// The tests of this module.
pub const TESTS: &[KernelTest] = &[
    KernelTest {
        name: "smp::all_madt_cpus_online",
        run: all_madt_cpus_online,
    },
    KernelTest {
        name: "smp::run_on_runs_on_target",
        run: run_on_runs_on_target,
    },
    KernelTest {
        name: "smp::broadcast_reaches_every_cpu",
        run: broadcast_reaches_every_cpu,
    },
    KernelTest {
        name: "smp::waiting_cpu_serves_its_queue",
        run: waiting_cpu_serves_its_queue,
    },
    KernelTest {
        name: "smp::cross_traffic_completes",
        run: cross_traffic_completes,
    },
    KernelTest {
        name: "smp::ipi_set_reaches_exactly_that_set",
        run: ipi_set_reaches_exactly_that_set,
    },
    KernelTest {
        name: "smp::ipi_all_but_self",
        run: ipi_all_but_self,
    },
    KernelTest {
        name: "smp::bad_targets_rejected",
        run: bad_targets_rejected,
    },
    KernelTest {
        name: "smp::timer_ticks_on_every_cpu",
        run: timer_ticks_on_every_cpu,
    },
    KernelTest {
        name: "smp::ap_stack_guard_faults",
        run: ap_stack_guard_faults,
    },
    KernelTest {
        name: "smp::cpu_set_operations",
        run: cpu_set_operations,
    },
];

/// Every CPU of the MADT is online, but the one `apfail=N` silenced, which keeps its
/// index and APIC ID (the CPUs after it are not renumbered).
fn all_madt_cpus_online(_: &TestContext) -> TestResult {
    let online = percpu::online();
    let n = madt_apic_ids().len() as u32;
    let silenced = silenced_ap();
    let expected: CpuSet = (0..n).filter(|&cpu| Some(cpu) != silenced).collect();
    check_eq!(online, expected);
    for (cpu, &id) in madt_apic_ids().iter().enumerate() {
        let slot = percpu::get(cpu as u32);
        check!(
            slot.is_some_and(|s| s.index() == cpu as u32 && s.apic_id() == id),
            "CPU {cpu} should have APIC ID {id}"
        );
    }
    Ok(())
}

fn run_on_runs_on_target(_: &TestContext) -> TestResult {
    for cpu in percpu::online().iter() {
        let pending = check_ok!(run_on(cpu, || (percpu::cpu_index(), apic::id())));
        let seen = pending.wait_timeout_ms(TIMEOUT_MS);
        let apic_id = percpu::get(cpu).map(|c| c.apic_id());
        check_eq!(seen, apic_id.map(|id| (cpu, id)));
    }
    Ok(())
}

fn broadcast_reaches_every_cpu(_: &TestContext) -> TestResult {
    let results = check_ok!(broadcast(|cpu| (cpu, percpu::cpu_index())));
    check_eq!(results.len(), percpu::online().len());
    for (cpu, (asked, ran)) in results {
        check!(
            cpu == asked && asked == ran,
            "work for CPU {asked} ran on CPU {ran}"
        );
    }
    Ok(())
}

fn waiting_cpu_serves_its_queue(_: &TestContext) -> TestResult {
    let me = percpu::cpu_index();
    let Some(other) = percpu::online().iter().find(|&c| c != me) else {
        skip!("needs 2 CPUs");
    };
    // `other` waits on work it queued for us while we wait on `other`.
    let nested = run_on(other, move || {
        run_on(me, percpu::cpu_index).map(|p| p.wait_timeout_ms(TIMEOUT_MS))
    });
    let nested = check_ok!(nested);
    let seen = nested.wait_timeout_ms(2 * TIMEOUT_MS);
    check!(
        matches!(seen, Some(Ok(Some(cpu))) if cpu == me),
        "nested work answered {seen:?}"
    );
    Ok(())
}

fn cross_traffic_completes(_: &TestContext) -> TestResult {
    const ROUNDS: usize = 200;
    let cpus: Vec<u32> = percpu::online().iter().collect();
    let n = cpus.len();
    if n < 2 {
        skip!("needs 2 CPUs to send work across");
    }
    let served = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&served);
    // Every CPU at once sends work to each of the others in turn and waits for it, while
    // the others do the same to it.
    let results = broadcast(move |me| {
        let pos = cpus.iter().position(|&c| c == me).unwrap_or(0);
        (1..=ROUNDS)
            .filter(|k| {
                let target = cpus[(pos + k) % cpus.len()];
                let counter = Arc::clone(&counter);
                let ran_on = run_on(target, move || {
                    counter.fetch_add(1, Ordering::Relaxed);
                    percpu::cpu_index()
                });
                ran_on.ok().and_then(|p| p.wait_timeout_ms(TIMEOUT_MS)) == Some(target)
            })
            .count()
    });
    for (cpu, done) in check_ok!(results) {
        check!(
            done == ROUNDS,
            "CPU {cpu} saw {done} of {ROUNDS} round trips"
        );
    }
    check_eq!(served.load(Ordering::Relaxed), n * ROUNDS);
    Ok(())
}

/// Each CPU's ping count.
fn pings() -> Vec<u64> {
    (0..MAX_CPUS as u32)
        .map(|cpu| percpu::get(cpu).map_or(0, |c| c.pings()))
        .collect()
}

/// Wait until every CPU of `set` has more pings than in `before`, then a little longer
/// (for pings that should not come); returns the increments.
fn ping_increments(before: &[u64], set: &CpuSet) -> Vec<u64> {
    let deadline = Deadline::after_ms(TIMEOUT_MS);
    while !deadline.expired()
        && !set
            .iter()
            .all(|cpu| pings()[cpu as usize] > before[cpu as usize])
    {
        core::hint::spin_loop();
    }
    timer::delay_us(20_000);
    pings()
        .iter()
        .zip(before)
        .map(|(now, then)| now - then)
        .collect()
}

fn ipi_set_reaches_exactly_that_set(_: &TestContext) -> TestResult {
    let online = percpu::online();
    let me = percpu::cpu_index();
    // Every other online CPU by rank, not by index: indices have gaps when a CPU failed
    // to start.
    let set: CpuSet = online
        .iter()
        .filter(|&cpu| cpu != me)
        .step_by(2)
        .chain([me])
        .collect();
    if set == online {
        skip!("needs 3 CPUs for one outside the set");
    }
    let before = pings();
    check_eq!(apic::send_ipi_set(&set, PING_VECTOR), Ok(()));
    let got = ping_increments(&before, &set);
    for cpu in online.iter() {
        let want = u64::from(set.contains(cpu));
        check!(
            got[cpu as usize] == want,
            "CPU {cpu} got {} pings, want {want}",
            got[cpu as usize]
        );
    }
    Ok(())
}

fn ipi_all_but_self(_: &TestContext) -> TestResult {
    let mut others = percpu::online();
    let me = percpu::cpu_index();
    others.remove(me);
    let before = pings();
    check_eq!(apic::send_ipi_all_but_self(PING_VECTOR), Ok(()));
    let got = ping_increments(&before, &others);
    for cpu in percpu::online().iter() {
        let want = u64::from(cpu != me);
        check!(
            got[cpu as usize] == want,
            "CPU {cpu} got {} pings, want {want}",
            got[cpu as usize]
        );
    }
    let before = pings();
    check_eq!(apic::send_ipi(me, PING_VECTOR), Ok(()));
    let got = ping_increments(&before, &CpuSet::single(me));
    check_eq!(got[me as usize], 1);
    Ok(())
}

fn bad_targets_rejected(_: &TestContext) -> TestResult {
    let online = percpu::online();
    let n = (0..MAX_CPUS as u32).find(|&cpu| !online.contains(cpu));
    let n = n.unwrap_or(MAX_CPUS as u32);
    let offline = [n, MAX_CPUS as u32, u32::MAX];
    for cpu in offline {
        check_eq!(
            apic::send_ipi(cpu, PING_VECTOR),
            Err(ApicError::Offline(cpu))
        );
        check!(
            matches!(run_on(cpu, || ()), Err(SmpError::Offline(c)) if c == cpu),
            "run_on({cpu}) accepted an offline CPU"
        );
    }
    let mut set = online;
    if set.insert(n) {
        check!(
            matches!(run_on_set(&set, |_| ()), Err(SmpError::Offline(c)) if c == n),
            "run_on_set accepted an offline CPU"
        );
        check_eq!(
            apic::send_ipi_set(&set, PING_VECTOR),
            Err(ApicError::Offline(n))
        );
    }
    check_eq!(apic::send_ipi(0, 3), Err(ApicError::BadVector(3)));
    check_eq!(
        apic::send_ipi_all_but_self(31),
        Err(ApicError::BadVector(31))
    );
    Ok(())
}

fn timer_ticks_on_every_cpu(_: &TestContext) -> TestResult {
    const TICKS: u64 = 3;
    let online = percpu::online();
    let ticks = || -> Vec<u64> {
        online
            .iter()
            .map(|cpu| percpu::get(cpu).map_or(0, |c| c.ticks()))
            .collect()
    };
    let before = ticks();
    let (t0, own0) = (timer::now_ns(), timer::ticks());
    let deadline = Deadline::after_ms(TIMEOUT_MS);
    while !deadline.expired()
        && !ticks()
            .iter()
            .zip(&before)
            .all(|(now, then)| now - then >= TICKS)
    {
        core::hint::spin_loop();
    }
    let after = ticks();
    for ((cpu, now), then) in online.iter().zip(&after).zip(&before) {
        check!(now - then >= TICKS, "CPU {cpu} ticked {} times", now - then);
    }
    let (elapsed, own) = (timer::now_ns() - t0, timer::ticks() - own0);
    let min_ns = (own.saturating_sub(1)) * 1_000_000_000 / timer::HZ;
    check!(
        elapsed >= min_ns,
        "{own} ticks of this CPU in only {elapsed} ns of TSC time"
    );
    Ok(())
}

fn ap_stack_guard_faults(_: &TestContext) -> TestResult {
    if percpu::online().len() < 2 {
        skip!("needs an application processor");
    }
    for cpu in percpu::online().iter().filter(|&cpu| cpu != 0) {
        let guard = check_ok!(stack_guard(cpu).ok_or("no recorded stack"));
        let addr = guard.as_u64();
        check_eq!(probe::read_u64(addr), None);
        check!(
            guard::owner_of(addr).is_some(),
            "the guard page of CPU {cpu} is not registered"
        );
        check!(
            probe::read_u64(addr + mm::base::addr::PAGE_SIZE).is_some(),
            "the lowest stack page of CPU {cpu} is not mapped"
        );
        let on_cpu =
            run_on(cpu, move || probe::read_u64(addr)).map(|p| p.wait_timeout_ms(TIMEOUT_MS));
        check!(
            matches!(on_cpu, Ok(Some(None))),
            "probing its own guard page on CPU {cpu} gave {on_cpu:?}"
        );
    }
    Ok(())
}

fn cpu_set_operations(_: &TestContext) -> TestResult {
    let mut set = CpuSet::new();
    check!(set.is_empty());
    check!(set.insert(0) && set.insert(63) && set.insert(64) && set.insert(MAX_CPUS as u32 - 1));
    check!(!set.insert(MAX_CPUS as u32), "inserted a CPU past MAX_CPUS");
    check_eq!(set.len(), 4);
    check_eq!(
        set.iter().collect::<Vec<_>>(),
        [0, 63, 64, MAX_CPUS as u32 - 1]
    );
    set.remove(63);
    check!(!set.contains(63) && set.contains(64) && !set.contains(u32::MAX));
    let other: CpuSet = [1, 64].into_iter().collect();
    check_eq!(
        set.difference(&other).iter().collect::<Vec<_>>(),
        [0, MAX_CPUS as u32 - 1]
    );
    check_eq!(set.union(&other).len(), 4);
    Ok(())
}
