//! In-kernel benchmarks. Each figure is one `BENCH {json}` line; comparisons are ratios
//! measured in the same run (QEMU's TCG is not real hardware, and machines are noisy).
//!
//! Buddy allocator: cycles per alloc + free of blocks of order 0, 9 and 18 with the
//! kernel's allocator (lock and interrupt masking included, as every kernel caller pays
//! them) against `buddy_system_allocator`'s `FrameAllocator` behind the same kind of lock,
//! on the same workload: a batch of live blocks allocated, then freed in shuffled order.
//! The baseline keeps its free lists in `BTreeSet`s whose nodes come from the kernel heap
//! (the global allocator): their allocation and freeing is part of `baseline_value`, and
//! the line says how many heap bytes the nodes hold once the baseline is set up
//! (`baseline_heap_bytes`). Ours keeps its lists in the frame metadata and uses no heap.
//!
//! The run ends with the memory manager's event counters, one `VMSTAT {json}` line.
//!
//! With `quick` (`./run-qemu.sh bench --quick`) every figure is measured once, on fewer
//! rounds: the lines and their fields are the same, the values only show the code runs.

use crate::mem::frames;
use crate::mem::tests::Rng;
use crate::sprintln;
use alloc::vec;
use alloc::vec::Vec;
use buddy_system_allocator::FrameAllocator;
use core::arch::x86_64::_rdtsc;
use mm::base::addr::{Pfn, MAX_ORDER};
use mm::frame::buddy::MigrateType;
use spin::Mutex;

/// Repetitions per figure; the median is reported.
const REPS: usize = 5;

/// How much of each figure to measure: `reps` repetitions (the median is reported), and
/// rounds divided by `shrink`.
#[derive(Clone, Copy)]
pub struct Effort {
    /// Repetitions per figure.
    pub reps: usize,
    /// Divides each figure's rounds.
    pub shrink: usize,
}

impl Effort {
    /// The full measurement, or with `quick` each figure once and short.
    pub fn new(quick: bool, reps: usize) -> Effort {
        if quick {
            Effort {
                reps: 1,
                shrink: 10,
            }
        } else {
            Effort { reps, shrink: 1 }
        }
    }

    /// `n` rounds, shrunk (at least one).
    pub fn rounds(&self, n: usize) -> usize {
        (n / self.shrink).max(1)
    }
}

fn cycles() -> u64 {
    // SAFETY: RDTSC has no side effects; the kernel runs at CPL 0.
    unsafe { _rdtsc() }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v
}

/// Cycles per alloc + free with the kernel's allocator; None when memory runs out.
fn ours(order: u8, batch: usize, rounds: usize, perm: &[usize]) -> Option<u64> {
    let mut live = vec![Pfn(0); batch];
    let start = cycles();
    for _ in 0..rounds {
        for slot in live.iter_mut() {
            *slot = frames::with_buddy(|b| b.alloc(order, MigrateType::Movable)).ok()?;
        }
        for &i in perm {
            frames::with_buddy(|b| b.free(live[i], order)).ok()?;
        }
    }
    Some((cycles() - start) / (batch * rounds) as u64)
}

/// Cycles per alloc + free with the baseline over the same frame numbers.
fn theirs(
    a: &Mutex<FrameAllocator<{ MAX_ORDER as usize + 2 }>>,
    order: u8,
    batch: usize,
    rounds: usize,
    perm: &[usize],
) -> Option<u64> {
    let count = 1usize << order;
    let mut live = vec![0usize; batch];
    let start = cycles();
    for _ in 0..rounds {
        for slot in live.iter_mut() {
            *slot = x86_64::instructions::interrupts::without_interrupts(|| a.lock().alloc(count))?;
        }
        for &i in perm {
            x86_64::instructions::interrupts::without_interrupts(|| {
                a.lock().dealloc(live[i], count)
            });
        }
    }
    Some((cycles() - start) / (batch * rounds) as u64)
}

/// The buddy allocator figures.
pub fn buddy(seed: u64, effort: Effort) {
    let heap_before = crate::mem::heap::usage().1;
    let baseline = Mutex::new(FrameAllocator::<{ MAX_ORDER as usize + 2 }>::new());
    // The baseline manages the same frame numbers that are free in ours right now.
    let total = frames::table().len() as u64;
    {
        let mut a = baseline.lock();
        let mut pfn = 0;
        while pfn < total {
            match frames::with_buddy(|b| b.free_block_containing(Pfn(pfn))) {
                Some((head, order)) if head == Pfn(pfn) => {
                    a.add_frame(pfn as usize, (pfn + (1 << order)) as usize);
                    pfn += 1 << order;
                }
                _ => pfn += 1,
            }
        }
    }
    let heap_bytes = crate::mem::heap::usage().1.saturating_sub(heap_before);
    for (order, batch, rounds) in [
        (0u8, 1024usize, 100usize),
        (9, 64, 100),
        (MAX_ORDER, 2, 2000),
    ] {
        let rounds = effort.rounds(rounds);
        let perm = shuffled(batch, seed);
        let (mut o, mut t) = (Vec::new(), Vec::new());
        for _ in 0..effort.reps {
            o.extend(ours(order, batch, rounds, &perm));
            t.extend(theirs(&baseline, order, batch, rounds, &perm));
        }
        if o.len() < effort.reps || t.len() < effort.reps {
            sprintln!("# buddy order {order}: not enough free memory for {batch} blocks; skipped");
            continue;
        }
        let (o, t) = (median(o), median(t));
        sprintln!(
            "BENCH {{\"name\":\"kernel.buddy.alloc_free.order{order}\",\"value\":{o},\"unit\":\"cycles/op\",\"baseline\":\"buddy_system_allocator\",\"baseline_value\":{t},\"ratio\":{:.3},\"batch\":{batch},\"baseline_nodes\":\"BTreeSet nodes on the kernel heap, their allocation counted in baseline_value\",\"baseline_heap_bytes\":{heap_bytes}}}",
            o as f64 / t as f64
        );
    }
}

/// The benchmark groups, by the prefix their figures' names share.
const GROUPS: [&str; 6] = [
    "kernel.buddy",
    "tlb",
    "vm.migrate",
    "vm.exchange",
    "vm.contig",
    "vm.huge",
];

/// Every in-kernel benchmark, or with `filter` only the groups whose name starts with
/// it or that it starts with (`vm` runs every vm group, `vm.contig.4k` the contiguity
/// group); with `quick`, each figure once and short.
pub fn run(seed: u64, quick: bool, filter: Option<&str>) {
    let wanted = |group: &str| filter.is_none_or(|f| group.starts_with(f) || f.starts_with(group));
    if !GROUPS.iter().any(|g| wanted(g)) {
        sprintln!(
            "# bench: no group matches the filter; groups: {}",
            GROUPS.join(" ")
        );
    }
    let runs: [&dyn Fn(); 6] = [
        &|| buddy(seed, Effort::new(quick, REPS)),
        &|| crate::tlb::bench::run(quick),
        &|| crate::vm::bench::run(quick),
        &|| crate::vm::bench_exchange::run(quick),
        &|| crate::vm::bench_contig::run(quick),
        &|| crate::vm::bench_huge::run(quick),
    ];
    if GROUPS.iter().any(|g| g.starts_with("vm") && wanted(g)) {
        let bytes = crate::vm::bench::warm_free_memory();
        sprintln!(
            "# bench: wrote once to every page of {} MiB of free memory first (the host backs guest memory on its first write)",
            bytes >> 20
        );
    }
    for (group, run) in GROUPS.iter().zip(runs) {
        if wanted(group) {
            run();
        }
    }
    if let Some(mm) = crate::vm::mm() {
        sprintln!("VMSTAT {}", mm.vmstat().json());
    }
}
