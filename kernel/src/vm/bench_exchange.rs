//! Exchange benchmarks, one `BENCH {json}` line per figure, each against its real
//! alternative measured in the same run.
//!
//! `vm.exchange.4k`, `vm.exchange.2m`, `vm.exchange.1g`: cycles per exchange of two
//! in-use blocks (64 pairs of 4 KiB pages in one batch; 2 MiB and 1 GiB pages a pair at
//! a time), against swapping the same two blocks by three migrations through a spare
//! block (a to the spare, b to a's frame, a to b's frame; each step batched as the
//! exchanges are): `baseline_value` cycles per swap, `ratio` exchange / swap. An exchange
//! reads and writes each byte of the two blocks once (through registers), the three
//! migrations copy three blocks, so the data alone predicts about 0.67; at 4 KiB the
//! engine's fixed costs (one pass against three) weigh in too.
//!
//! `vm.exchange.buffer.4k`, `vm.exchange.buffer.2m`: cycles per exchange the way the
//! kernel swaps ([`SwapBuffer::Registers`]) against a word-sized stack buffer
//! (`baseline_value`, `ratio` registers / word), a cache-line buffer (`line_value`,
//! `line_ratio` registers / line) and a page buffer (`page_value`, `page_ratio`
//! registers / page), on the same pairs.
//!
//! The address space is loaded on the measuring CPU only, so each batch's shootdown is a
//! local flush. One untimed round first (the host backs guest memory lazily), then the
//! median of the timed rounds.

use super::bench::{heads, BENCH_BASE, ROUNDS};
use super::{activate, deactivate, KernelMm, Space};
use crate::arch::timer;
use crate::mem::frames;
use crate::sprintln;
use alloc::sync::Arc;
use alloc::vec::Vec;
use mm::base::addr::{PageSize, Pfn};
use mm::frame::buddy::MigrateType;
use mm::mapping::vma::{HugePolicy, VmaFlags};
use mm::ops::exchange::SwapBuffer;
use mm::ops::migrate::Destination;

/// One figure's blocks: `pairs` pairs of `size`, exchanged `batch` pairs per call.
#[derive(Clone, Copy)]
struct Shape {
    size: PageSize,
    pairs: u64,
    batch: usize,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The pairs (block i, block pairs + i) as mapped now.
fn pairs(space: &Space, shape: Shape) -> Option<Vec<(Pfn, Pfn)>> {
    let n = shape.pairs;
    let blocks = heads(space, BENCH_BASE, 2 * n * shape.size.bytes(), shape.size);
    (blocks.len() as u64 == 2 * n).then(|| {
        (0..n as usize)
            .map(|i| (blocks[i], blocks[n as usize + i]))
            .collect()
    })
}

/// Cycles per exchange of every pair through `buffer`; None if one fails.
fn exchange_round(mm: &KernelMm, space: &Space, shape: Shape, buffer: SwapBuffer) -> Option<u64> {
    let pairs = pairs(space, shape)?;
    let start = timer::tsc();
    for chunk in pairs.chunks(shape.batch) {
        if mm
            .exchange_batch_with(chunk, buffer)
            .iter()
            .any(Result::is_err)
        {
            return None;
        }
    }
    Some((timer::tsc() - start) / shape.pairs)
}

/// Migrate each block of `from` to the destination `to` gives it, in batches; the new
/// heads, or None if one fails.
fn migrate_all(
    mm: &KernelMm,
    from: &[Pfn],
    to: impl Fn(usize) -> Destination,
    batch: usize,
) -> Option<Vec<Pfn>> {
    let mut moved = Vec::with_capacity(from.len());
    for (c, chunk) in from.chunks(batch).enumerate() {
        let requests: Vec<(Pfn, Destination)> = chunk
            .iter()
            .enumerate()
            .map(|(i, &h)| (h, to(c * batch + i)))
            .collect();
        for r in mm.migrate_batch(&requests) {
            moved.push(r.ok()?);
        }
    }
    Some(moved)
}

/// Free blocks of `size` to swap through, one per pair (allocated and freed again, so
/// the migrations allocate exactly them; with one migration per batch, `Any` could
/// hand out the frame a previous step just freed, which the next step needs).
fn spares(size: PageSize, n: u64) -> Option<Vec<Pfn>> {
    let mut blocks = Vec::with_capacity(n as usize);
    for _ in 0..n {
        match frames::alloc(size.order(), MigrateType::Movable) {
            Ok(p) => blocks.push(p),
            Err(_) => break,
        }
    }
    let all = blocks.len() as u64 == n;
    for &p in &blocks {
        frames::free(p.addr(), size.order()).ok()?;
    }
    all.then_some(blocks)
}

/// Cycles per swap of every pair by three migrations through a spare block.
fn swap_round(mm: &KernelMm, space: &Space, shape: Shape) -> Option<u64> {
    let pairs = pairs(space, shape)?;
    let (a, b): (Vec<Pfn>, Vec<Pfn>) = pairs.into_iter().unzip();
    let spare = spares(shape.size, shape.pairs)?;
    let start = timer::tsc();
    migrate_all(mm, &a, |i| Destination::Frame(spare[i]), shape.batch)?;
    migrate_all(mm, &b, |i| Destination::Frame(a[i]), shape.batch)?;
    migrate_all(mm, &spare, |i| Destination::Frame(b[i]), shape.batch)?;
    Some((timer::tsc() - start) / shape.pairs)
}

/// The median of `rounds` timed rounds of `round`, after an untimed one.
fn rounds(n: usize, mut round: impl FnMut() -> Option<u64>) -> Option<u64> {
    round()?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(round()?);
    }
    Some(median(v))
}

/// Map and populate the blocks of `shape` in a new address space loaded here.
fn setup(mm: &KernelMm, shape: Shape) -> Result<Arc<Space>, &'static str> {
    let space = mm.new_space().map_err(|_| "no address space")?;
    let huge = if shape.size == PageSize::Size4K {
        HugePolicy::Never
    } else {
        HugePolicy::Always
    };
    let len = 2 * shape.pairs * shape.size.bytes();
    let ready = mm
        .map_anon(&space, BENCH_BASE, len, VmaFlags::private(huge, true))
        .map_err(|_| "mapping failed")
        .and_then(|()| {
            mm.populate(&space, BENCH_BASE, len)
                .map_err(|_| "not enough memory")
        })
        .and_then(|()| {
            pairs(&space, shape)
                .map(|_| ())
                .ok_or("no free block of this size")
        })
        .and_then(|()| activate(&space).map_err(|_| "activation failed"));
    match ready {
        Ok(()) => Ok(space),
        Err(why) => {
            deactivate();
            let _ = mm.destroy_space(&space);
            Err(why)
        }
    }
}

fn teardown(mm: &KernelMm, name: &str, space: &Space) {
    deactivate();
    if let Err(e) = mm.destroy_space(space) {
        sprintln!("# {name}: destroying the address space: {e}");
    }
}

/// `vm.exchange.<size>`: exchange against three migrations.
fn against_migrations(mm: &KernelMm, name: &str, shape: Shape, n: usize) {
    let space = match setup(mm, shape) {
        Ok(s) => s,
        Err(why) => return sprintln!("# {name}: skipped ({why})"),
    };
    let exchange = rounds(n, || {
        exchange_round(mm, &space, shape, SwapBuffer::Registers)
    });
    let swap = rounds(n, || swap_round(mm, &space, shape));
    teardown(mm, name, &space);
    match (exchange, swap) {
        (Some(x), Some(s)) => sprintln!(
            "BENCH {{\"name\":\"{name}\",\"value\":{x},\"unit\":\"cycles/exchange\",\"baseline\":\"3 migrations through a spare block\",\"baseline_value\":{s},\"ratio\":{:.3},\"pairs\":{},\"batch\":{}}}",
            x as f64 / s as f64,
            shape.pairs,
            shape.batch
        ),
        _ => sprintln!("# {name}: skipped (an exchange or a migration failed: no spare block?)"),
    }
}

/// `vm.exchange.buffer.<size>`: registers against a word, a line and a page buffer.
fn buffers(mm: &KernelMm, name: &str, shape: Shape, n: usize) {
    let space = match setup(mm, shape) {
        Ok(s) => s,
        Err(why) => return sprintln!("# {name}: skipped ({why})"),
    };
    let [word, line, page, registers] = [
        SwapBuffer::Word,
        SwapBuffer::Line,
        SwapBuffer::Page,
        SwapBuffer::Registers,
    ]
    .map(|b| rounds(n, || exchange_round(mm, &space, shape, b)));
    teardown(mm, name, &space);
    match (word, line, page, registers) {
        (Some(w), Some(l), Some(p), Some(r)) => sprintln!(
            "BENCH {{\"name\":\"{name}\",\"value\":{r},\"unit\":\"cycles/exchange\",\"baseline\":\"word buffer\",\"baseline_value\":{w},\"ratio\":{:.3},\"line_value\":{l},\"line_ratio\":{:.3},\"page_value\":{p},\"page_ratio\":{:.3},\"pairs\":{},\"batch\":{}}}",
            r as f64 / w as f64,
            r as f64 / l as f64,
            r as f64 / p as f64,
            shape.pairs,
            shape.batch
        ),
        _ => sprintln!("# {name}: skipped (an exchange failed)"),
    }
}

/// Every exchange figure; with `quick`, one timed round each.
pub fn run(quick: bool) {
    let n = if quick { 1 } else { ROUNDS };
    let Some(mm) = super::mm() else {
        sprintln!("# vm: address spaces are not set up");
        return;
    };
    let k4 = Shape {
        size: PageSize::Size4K,
        pairs: 64,
        batch: 64,
    };
    let m2 = Shape {
        size: PageSize::Size2M,
        pairs: 4,
        batch: 1,
    };
    let g1 = Shape {
        size: PageSize::Size1G,
        pairs: 1,
        batch: 1,
    };
    against_migrations(mm, "vm.exchange.4k", k4, n);
    against_migrations(mm, "vm.exchange.2m", m2, n);
    against_migrations(mm, "vm.exchange.1g", g1, n);
    buffers(mm, "vm.exchange.buffer.4k", k4, n);
    buffers(mm, "vm.exchange.buffer.2m", m2, n);
}
