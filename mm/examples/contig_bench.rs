//! Host benchmark of contiguity generation: the memory manager's own code, natively on
//! this machine, over physical memory emulated by an arena (page tables, frames and
//! data all in host memory) with no CPU caching translations (a shootdown has nothing to
//! flush).
//!
//! Run with `cargo run --release -p mm --features std --example contig_bench`. It prints
//! two `BENCH {...}` lines. `host.contig.4k`: two address spaces each map one VMA of 1024
//! pages of 4 KiB, faulted in alternately so that their frames interleave, and both VMAs
//! are made contiguous (every page migrates into a free window). `host.contig.4k.tight`:
//! the same two VMAs in 64 MiB, faulted in alternately with a third VMA that takes all
//! of memory but about 600 frames, so that every window holds other pages and most pages
//! are exchanged into place (the `vm.contig.4k.tight` kind of figure). `value` is the median
//! over the rounds of MB/s of pages moved, over the time of the two calls; the baseline
//! copies as many pages with the same `copy_frame` the moves use, from the VMAs' frames
//! into frames of its own (written once before), so `ratio` is the share of plain copy
//! bandwidth contiguity generation keeps. `ns_per_page` and `copy_ns_per_page` are the
//! medians of the same two timings per page moved (the host's noise moves the two
//! together less than it moves their ratio's inputs one at a time). Each round maps and
//! faults its VMAs afresh (untimed).

use mm::aspace::{AddressSpace, Mm};
use mm::backend::phys::{Arena, PhysMem};
use mm::backend::shootdown::{FlushBatch, ShootdownError};
use mm::backend::source::{BuddyFrames, FrameSource};
use mm::backend::tlb::TlbShootdown;
use mm::base::addr::{Pfn, PAGE_SIZE};
use mm::base::cpuset::CpuSet;
use mm::frame::buddy::{BuddyAllocator, MigrateType};
use mm::frame::meta::FrameTable;
use mm::frame::node::NodeMap;
use mm::mapping::vma::{HugePolicy, VmaFlags};
use mm::ops::contig::ContigOptions;
use std::sync::Arc;
use std::time::Instant;

/// 512 MiB of emulated memory.
const FRAMES: u64 = 1 << 17;
/// 64 MiB of emulated memory for the tight figure.
const TIGHT_FRAMES: u64 = 1 << 14;
/// Frames the tight figure leaves free, about.
const TIGHT_FREE: u64 = 600;
/// Where the tight figure's third VMA is mapped.
const FILLER_VA: u64 = 0x4000_0000_0000;
/// Pages per VMA.
const PAGES: u64 = 1024;
/// Where each VMA is mapped.
const VA: u64 = 0x2000_0000_0000;
/// Timed rounds; the median is reported.
const ROUNDS: usize = 31;

/// No CPU runs the address spaces: a shootdown has nothing to flush.
struct NoCpus;

impl TlbShootdown for NoCpus {
    fn shootdown(&self, _cpus: CpuSet, _batch: &FlushBatch) -> Result<(), ShootdownError> {
        Ok(())
    }
}

type Space<'m> = Arc<AddressSpace<'m, Arena>>;

/// Map both VMAs and fault their pages in alternately.
fn scattered<'m>(mm: &Mm<'m, Arena>, _free: u64) -> [Space<'m>; 2] {
    mapped_alternately(mm, 0)
}

/// Map both VMAs and, in the second space, a third one of the `free` frames but about
/// [`TIGHT_FREE`] (less a sixty-fourth for page tables), and fault all three in
/// alternately.
fn squeezed<'m>(mm: &Mm<'m, Arena>, free: u64) -> [Space<'m>; 2] {
    let filler = free.saturating_sub(2 * PAGES + TIGHT_FREE) * 63 / 64;
    mapped_alternately(mm, filler)
}

/// Both VMAs and, when `filler` is not zero, a third VMA of `filler` pages in the second
/// space, their pages faulted in one of each in turn.
fn mapped_alternately<'m>(mm: &Mm<'m, Arena>, filler: u64) -> [Space<'m>; 2] {
    let flags = VmaFlags::private(HugePolicy::Never, true);
    let spaces = [(); 2].map(|_| mm.new_space().expect("address space"));
    let mut vmas: Vec<(&Space<'m>, u64, u64)> = spaces.iter().map(|s| (s, VA, PAGES)).collect();
    if filler > 0 {
        vmas.push((&spaces[1], FILLER_VA, filler));
    }
    for &(s, va, pages) in &vmas {
        mm.map_anon(s, va, pages * PAGE_SIZE, flags.clone())
            .expect("mapping the VMA");
    }
    for p in 0..PAGES.max(filler) {
        for &(s, va, _) in vmas.iter().filter(|v| p < v.2) {
            mm.populate(s, va + p * PAGE_SIZE, PAGE_SIZE)
                .expect("faulting a page in");
        }
    }
    spaces
}

/// Pages moved by making both VMAs contiguous, each way.
#[derive(Clone, Copy, Default)]
struct Moved {
    migrated: u64,
    exchanged: u64,
    displaced: u64,
}

impl Moved {
    fn pages(&self) -> u64 {
        self.migrated + self.exchanged + self.displaced
    }
}

/// Seconds and pages moved of making both VMAs contiguous.
fn contig<'m>(mm: &Mm<'m, Arena>, spaces: &[Space<'m>; 2]) -> (f64, Moved) {
    let start = Instant::now();
    let mut moved = Moved::default();
    for s in spaces {
        let r = mm
            .make_vma_contiguous(s, VA, &ContigOptions::default())
            .expect("making the VMA contiguous");
        assert_eq!(r.after.chunks, 1, "the VMA ends in one chunk");
        moved.migrated += r.migrated;
        moved.exchanged += r.exchanged;
        moved.displaced += r.displaced;
    }
    (start.elapsed().as_secs_f64(), moved)
}

/// Seconds of copying `pages` pages from the VMAs' frames into `targets`.
fn copy(mem: &Arena, spaces: &[Space<'_>; 2], targets: &[Pfn], pages: u64) -> f64 {
    let sources: Vec<Pfn> = spaces
        .iter()
        .flat_map(|s| (0..PAGES).filter_map(|p| s.translate(VA + p * PAGE_SIZE)))
        .map(|t| Pfn::containing(t.pa))
        .collect();
    let start = Instant::now();
    for i in 0..pages as usize {
        let (src, dst) = (sources[i % sources.len()], targets[i % targets.len()]);
        mem.copy_frame(dst.addr(), src.addr());
    }
    start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    figure("host.contig.4k", FRAMES, scattered);
    figure("host.contig.4k.tight", TIGHT_FRAMES, squeezed);
}

/// Measure and print the figure `name` over `frames` frames of emulated memory, its
/// VMAs mapped and faulted in by `setup` (told how many frames are free once the
/// baseline has taken its own).
fn figure(name: &str, frames: u64, setup: for<'m> fn(&Mm<'m, Arena>, u64) -> [Space<'m>; 2]) {
    let mem = Arena::new(frames);
    // Written once, so that no move pays for the host backing a frame on first write.
    for f in 0..frames {
        mem.zero_frame(Pfn(f).addr());
    }
    let records = FrameTable::boxed_records(frames as usize);
    let table = FrameTable::new(&records).expect("frame table");
    let mut buddy = BuddyAllocator::new(table);
    buddy
        .add_free_range(Pfn(1), Pfn(frames))
        .expect("fresh frame table");
    let frames = BuddyFrames::new(buddy, NodeMap::single(Pfn(0), Pfn(frames)));
    let mm = Mm::new(&mem, &frames, &NoCpus, None);
    let targets: Vec<Pfn> = (0..2 * PAGES)
        .map(|_| {
            frames
                .alloc(0, MigrateType::Movable, None)
                .expect("a frame")
        })
        .collect();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut ns_ours, mut ns_theirs) = (Vec::new(), Vec::new());
    let mut last = Moved::default();
    let free = frames.usage().iter().map(|u| u.free).sum::<u64>();
    for round in 0..=ROUNDS {
        let spaces = setup(&mm, free);
        let (secs, moved) = contig(&mm, &spaces);
        let copy_secs = copy(&mem, &spaces, &targets, moved.pages());
        for s in &spaces {
            mm.destroy_space(s).expect("destroying an address space");
        }
        // Round 0 warms code and caches.
        if round > 0 {
            let bytes = (moved.pages() * PAGE_SIZE) as f64;
            ours.push(bytes / secs / 1e6);
            theirs.push(bytes / copy_secs / 1e6);
            ns_ours.push(secs * 1e9 / moved.pages() as f64);
            ns_theirs.push(copy_secs * 1e9 / moved.pages() as f64);
            last = moved;
        }
    }
    let (value, baseline) = (median(ours), median(theirs));
    let (ns, copy_ns) = (median(ns_ours), median(ns_theirs));
    println!(
        "BENCH {{\"name\":\"{name}\",\"value\":{value:.1},\"unit\":\"MB/s\",\"baseline\":\"copy_frame of as many pages\",\"baseline_value\":{baseline:.1},\"ratio\":{:.3},\"pages_moved\":{},\"migrated\":{},\"exchanged\":{},\"displaced\":{},\"ns_per_page\":{ns:.0},\"copy_ns_per_page\":{copy_ns:.0},\"rounds\":{ROUNDS}}}",
        value / baseline,
        last.pages(),
        last.migrated,
        last.exchanged,
        last.displaced
    );
}
