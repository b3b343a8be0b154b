//! Host benchmark of the buddy allocator: the cost of one alloc + free of a block of order
//! 0, 9 and 18, against the `buddy_system_allocator` crate's `FrameAllocator` on the same
//! workload in the same run.
//!
//! Run with `cargo run --release -p mm --example buddy_bench --features std`. Each figure
//! is printed as one `BENCH {...}` line; `ratio` is ours / theirs (below 1: we are faster).
//! The workload: allocate a batch of blocks, free them in a shuffled order, repeat; the
//! figure is the median over several alternating repetitions.

use buddy_system_allocator::FrameAllocator;
use mm::base::addr::{Pfn, MAX_ORDER};
use mm::frame::buddy::{BuddyAllocator, MigrateType};
use mm::frame::meta::{FrameMeta, FrameTable};
use std::hint::black_box;
use std::time::Instant;

/// 4 GiB of frames.
const FRAMES: usize = 1 << 20;
/// Alternating repetitions per figure; the median is reported.
const REPS: usize = 7;

/// The baseline, with one size class more than the whole memory needs: a merge that
/// reaches its top class drops the merged block.
type Baseline = FrameAllocator<{ FRAMES.ilog2() as usize + 2 }>;

/// One figure: blocks of `order`, `batch` of them live at once, `rounds` rounds.
struct Workload {
    order: u8,
    batch: usize,
    rounds: usize,
}

impl Workload {
    fn ops(&self) -> usize {
        self.batch * self.rounds
    }
}

/// A fixed permutation of `0..n` (xorshift Fisher-Yates), the order of the frees.
fn permutation(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// Nanoseconds per alloc + free with our allocator.
fn ours(b: &mut BuddyAllocator<'_>, w: &Workload, perm: &[usize]) -> f64 {
    let mut live = vec![Pfn(0); w.batch];
    let start = Instant::now();
    for _ in 0..w.rounds {
        for slot in live.iter_mut() {
            *slot = b
                .alloc(black_box(w.order), MigrateType::Movable)
                .expect("benchmark memory exhausted");
        }
        for &i in perm {
            b.free(black_box(live[i]), w.order)
                .expect("benchmark free failed");
        }
    }
    start.elapsed().as_nanos() as f64 / w.ops() as f64
}

/// Nanoseconds per alloc + free with the baseline.
fn theirs(a: &mut Baseline, w: &Workload, perm: &[usize]) -> f64 {
    let count = 1usize << w.order;
    let mut live = vec![0usize; w.batch];
    let start = Instant::now();
    for _ in 0..w.rounds {
        for slot in live.iter_mut() {
            *slot = a
                .alloc(black_box(count))
                .expect("benchmark memory exhausted");
        }
        for &i in perm {
            a.dealloc(black_box(live[i]), count);
        }
    }
    start.elapsed().as_nanos() as f64 / w.ops() as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let records: Vec<FrameMeta> = (0..FRAMES).map(|_| FrameMeta::new()).collect();
    let mut b = BuddyAllocator::new(FrameTable::new(&records).expect("table too large"));
    b.add_free_range(Pfn(0), Pfn(FRAMES as u64))
        .expect("fresh table");
    let mut a = Baseline::new();
    a.add_frame(0, FRAMES);

    let workloads = [
        Workload {
            order: 0,
            batch: 1024,
            rounds: 1000,
        },
        Workload {
            order: 9,
            batch: 256,
            rounds: 1000,
        },
        Workload {
            order: MAX_ORDER,
            batch: 2,
            rounds: 100_000,
        },
    ];
    for w in &workloads {
        let perm = permutation(w.batch);
        let warm = Workload { rounds: 1, ..*w };
        ours(&mut b, &warm, &perm);
        theirs(&mut a, &warm, &perm);
        let (mut mine, mut base) = (Vec::new(), Vec::new());
        for _ in 0..REPS {
            mine.push(ours(&mut b, w, &perm));
            base.push(theirs(&mut a, w, &perm));
        }
        let (value, baseline) = (median(mine), median(base));
        println!(
            "BENCH {{\"name\":\"host.buddy.alloc_free.order{}\",\"value\":{:.1},\"unit\":\"ns/op\",\"baseline\":\"buddy_system_allocator\",\"baseline_value\":{:.1},\"ratio\":{:.3}}}",
            w.order,
            value,
            baseline,
            value / baseline
        );
    }
    b.audit().expect("allocator consistent after the benchmark");
}
