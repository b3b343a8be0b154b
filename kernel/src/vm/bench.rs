//! Migration throughput, one `BENCH {json}` line per page size, against plain copy
//! bandwidth measured in the same run.
//!
//! `vm.migrate.4k`, `vm.migrate.2m`, `vm.migrate.1g`: an address space maps 16 MiB of
//! 4 KiB pages, 32 MiB of 2 MiB pages or one 1 GiB page, loaded on the measuring CPU
//! (so each batch's shootdown is a local flush: no other CPU uses it). Every block is
//! migrated to a free block anywhere (4 KiB pages in batches of 64, huge pages one at a
//! time), one untimed round then three timed ones; the value is the median MB/s of data
//! moved.
//!
//! The baselines copy the same bytes from the same frames into other blocks (allocated
//! once, warmed by an untimed round), 4 KiB at a time as migration's frame copy does
//! (same working set), once with `rep movsb` (`rep_movsb_value`) and once with `rep
//! movsq` (`rep_movsq_value`), the instruction the kernel's `memcpy`, and so migration's
//! frame copy, uses on this target. `baseline` names the faster of the two and `ratio`
//! is migration / that copy: the share of plain copy bandwidth migration keeps. (Under
//! QEMU's TCG `rep movsb` is emulated a byte at a time, several times slower than `rep
//! movsq`; on hardware with fast strings, ERMSB, the two are close.) `rep_movsq_ratio`
//! is migration / `rep movsq` whichever is faster.
//!
//! Page i of a huge block is copied to page i + 1 of its destination (cyclically): under
//! TCG, page i to page i of two 2 MiB-aligned blocks makes source and destination collide
//! in the emulator's direct-mapped software TLB on every access and runs several times
//! slower, an artifact of emulation (hardware TLBs are set-associative, and the linear
//! map uses 1 GiB pages) that plain copy bandwidth should not carry. Migration itself
//! copies page i to page i and pays it.

use super::{activate, deactivate, KernelMm, Space};
use crate::arch::timer;
use crate::mem::{frames, physmap};
use crate::sprintln;
use alloc::sync::Arc;
use alloc::vec::Vec;
use mm::backend::phys::PhysMem;
use mm::backend::source::FrameSource;
use mm::base::addr::{PageSize, Pfn, PAGE_SIZE};
use mm::frame::buddy::MigrateType;
use mm::mapping::vma::{HugePolicy, VmaFlags};
use mm::ops::migrate::Destination;
use x86_64::PhysAddr;

/// Where the benchmark maps its pages (1 GiB aligned, user half).
pub(super) const BENCH_BASE: u64 = 0x0000_2000_0000_0000;
/// Timed rounds per figure (one with `quick`); the median is reported.
pub(super) const ROUNDS: usize = 3;

/// How a baseline copy moves bytes.
#[derive(Clone, Copy)]
pub(super) enum Copy {
    /// `rep movsb`: one byte per iteration (fast strings on hardware with ERMSB).
    Movsb,
    /// `rep movsq`: eight bytes per iteration (what the kernel's `memcpy`, and so
    /// migration's frame copy, uses on this target).
    Movsq,
}

/// Copy `len` bytes (a multiple of 8) from physical `src` to physical `dst`.
pub(super) fn copy(how: Copy, dst: PhysAddr, src: PhysAddr, len: u64) {
    let (d, s) = (physmap::virt(dst).as_u64(), physmap::virt(src).as_u64());
    // SAFETY: both ranges are whole blocks the caller owns (a mapped block it reads, a
    // block it allocated to write), reached through the linear map; they do not overlap.
    unsafe {
        match how {
            Copy::Movsb => core::arch::asm!(
                "rep movsb",
                inout("rcx") len => _,
                inout("rdi") d => _,
                inout("rsi") s => _,
                options(nostack, preserves_flags)
            ),
            Copy::Movsq => core::arch::asm!(
                "rep movsq",
                inout("rcx") len / 8 => _,
                inout("rdi") d => _,
                inout("rsi") s => _,
                options(nostack, preserves_flags)
            ),
        }
    }
}

/// The plain copy a figure is measured against: the faster of `rep movsb` and `rep
/// movsq` (MB/s), with its name.
pub(super) fn fastest(movsb: f64, movsq: f64) -> (&'static str, f64) {
    if movsq >= movsb {
        ("rep movsq", movsq)
    } else {
        ("rep movsb", movsb)
    }
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(super) fn mb_per_s(bytes: u64, ns: u64) -> f64 {
    bytes as f64 * 1e3 / ns.max(1) as f64
}

/// Write once to every page of every free 2 MiB block (each allocated, written and freed
/// again); returns the bytes written to. Under emulation the host backs guest memory on
/// its first write, which costs several times a page copy: without this, a figure whose
/// moves land on never-written frames would pay that where the copy baselines (whose
/// destinations are warmed by an untimed pass) do not. On hardware it changes nothing.
pub fn warm_free_memory() -> u64 {
    let mut held = Vec::new();
    while let Ok(p) = frames::alloc(9, MigrateType::Movable) {
        held.push(p);
    }
    for &p in &held {
        for i in 0..PageSize::Size2M.bytes() / PAGE_SIZE {
            physmap::PHYS
                .word(p.add(i).addr())
                .store(0, core::sync::atomic::Ordering::Relaxed);
        }
    }
    let bytes = held.len() as u64 * PageSize::Size2M.bytes();
    for p in held {
        if frames::free(p.addr(), 9).is_err() {
            sprintln!("# bench: freeing a warmed block failed");
        }
    }
    bytes
}

/// The head of every block mapped in `[start, start + len)`.
pub(super) fn heads(space: &Space, start: u64, len: u64, size: PageSize) -> Vec<Pfn> {
    let table = super::frames().frame_table();
    (0..len / size.bytes())
        .filter_map(|i| space.translate(start + i * size.bytes()))
        .filter(|t| t.size == size)
        .filter_map(|t| table.head_of(Pfn::containing(t.leaf_base_pa)))
        .collect()
}

/// Median MB/s of migrating every block of `space`, `batch` blocks per call, after one
/// untimed round (the host backs guest memory lazily: memory touched for the first time
/// costs it a page fault, which is no part of what is measured).
fn migrate_rounds(
    mm: &KernelMm,
    space: &Space,
    size: PageSize,
    n: u64,
    batch: usize,
    rounds: usize,
) -> Option<f64> {
    let mut rates = Vec::new();
    for round in 0..=rounds {
        let blocks = heads(space, BENCH_BASE, n * size.bytes(), size);
        if blocks.len() as u64 != n {
            return None;
        }
        let started = timer::now_ns();
        for chunk in blocks.chunks(batch) {
            let requests: Vec<(Pfn, Destination)> =
                chunk.iter().map(|&h| (h, Destination::Any)).collect();
            if mm.migrate_batch(&requests).iter().any(Result::is_err) {
                return None;
            }
        }
        if round > 0 {
            rates.push(mb_per_s(n * size.bytes(), timer::now_ns() - started));
        }
    }
    Some(median(rates))
}

/// Median MB/s of copying the same blocks into other blocks with `how`, 4 KiB at a time
/// as migration copies them (each page one page further into its destination block: see
/// the module doc), after one untimed round (see [`migrate_rounds`]).
fn copy_rounds(space: &Space, size: PageSize, n: u64, how: Copy, rounds: usize) -> Option<f64> {
    let sources = heads(space, BENCH_BASE, n * size.bytes(), size);
    let mut targets = Vec::new();
    for _ in &sources {
        match frames::alloc(size.order(), MigrateType::Movable) {
            Ok(pfn) => targets.push(pfn),
            Err(_) => break,
        }
    }
    let mut rates = Vec::new();
    if targets.len() == sources.len() {
        for round in 0..=rounds {
            let started = timer::now_ns();
            for (&src, &dst) in sources.iter().zip(&targets) {
                let pages = size.bytes() / PAGE_SIZE;
                for i in 0..pages {
                    let to = dst.add((i + 1) % pages).addr();
                    copy(how, to, src.add(i).addr(), PAGE_SIZE);
                }
            }
            if round > 0 {
                rates.push(mb_per_s(n * size.bytes(), timer::now_ns() - started));
            }
        }
    }
    for dst in targets {
        if frames::free(dst.addr(), size.order()).is_err() {
            return None;
        }
    }
    (!rates.is_empty()).then(|| median(rates))
}

/// One figure: `n` blocks of `size`, migrated `batch` at a time.
fn figure(mm: &KernelMm, name: &str, size: PageSize, n: u64, batch: usize, rounds: usize) {
    let Ok(space) = mm.new_space() else {
        sprintln!("# {name}: no address space");
        return;
    };
    let result = measure(mm, &space, size, n, batch, rounds);
    deactivate();
    if let Err(e) = mm.destroy_space(&space) {
        sprintln!("# {name}: destroying the address space: {e}");
    }
    match result {
        Ok((migrate, movsb, movsq)) => {
            let (baseline, copy) = fastest(movsb, movsq);
            sprintln!(
                "BENCH {{\"name\":\"{name}\",\"value\":{migrate:.1},\"unit\":\"MB/s\",\"baseline\":\"{baseline}\",\"baseline_value\":{copy:.1},\"ratio\":{:.3},\"rep_movsb_value\":{movsb:.1},\"rep_movsq_value\":{movsq:.1},\"rep_movsq_ratio\":{:.3},\"bytes\":{},\"batch\":{batch}}}",
                migrate / copy,
                migrate / movsq,
                n * size.bytes()
            )
        }
        Err(why) => sprintln!("# {name}: skipped ({why})"),
    }
}

fn measure(
    mm: &KernelMm,
    space: &Arc<Space>,
    size: PageSize,
    n: u64,
    batch: usize,
    rounds: usize,
) -> Result<(f64, f64, f64), &'static str> {
    let huge = if size == PageSize::Size4K {
        HugePolicy::Never
    } else {
        HugePolicy::Always
    };
    let len = n * size.bytes();
    mm.map_anon(space, BENCH_BASE, len, VmaFlags::private(huge, true))
        .map_err(|_| "mapping failed")?;
    mm.populate(space, BENCH_BASE, len)
        .map_err(|_| "not enough memory")?;
    if heads(space, BENCH_BASE, len, size).len() as u64 != n {
        return Err("no free block of this size");
    }
    activate(space).map_err(|_| "activation failed")?;
    let migrate =
        migrate_rounds(mm, space, size, n, batch, rounds).ok_or("no free destination block")?;
    let movsb =
        copy_rounds(space, size, n, Copy::Movsb, rounds).ok_or("no free block to copy into")?;
    let movsq =
        copy_rounds(space, size, n, Copy::Movsq, rounds).ok_or("no free block to copy into")?;
    Ok((migrate, movsb, movsq))
}

/// Every migration figure; with `quick`, one timed round each.
pub fn run(quick: bool) {
    let rounds = if quick { 1 } else { ROUNDS };
    let Some(mm) = super::mm() else {
        sprintln!("# vm: address spaces are not set up");
        return;
    };
    figure(mm, "vm.migrate.4k", PageSize::Size4K, 4096, 64, rounds);
    figure(mm, "vm.migrate.2m", PageSize::Size2M, 16, 1, rounds);
    figure(mm, "vm.migrate.1g", PageSize::Size1G, 1, 1, rounds);
}
