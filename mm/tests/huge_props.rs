//! Promotion and split in place under concurrency, over the emulated MMU of
//! `aspace::testing` (each CPU's "TLB" lives for one access, so a shootdown waits for the
//! accesses in flight): writers on three CPUs keep writing changing values into 2 MiB
//! ranges and reading them back while a fourth CPU promotes them to 2 MiB leaves and
//! splits them back to 4 KiB, over and over. No write is lost, the mapping flips between
//! the two sizes without the data moving, and the audits are clean. The same with a
//! shared region mapped by two address spaces, writers in both, promoted from one space
//! and split from the other.
#![cfg(feature = "std")]

use mm::aspace::testing::{EmuCpu, EmuTlb};
use mm::aspace::vmstat::Event;
use mm::aspace::Mm;
use mm::backend::phys::Arena;
use mm::backend::source::BuddyFrames;
use mm::base::addr::{PageSize, Pfn};
use mm::frame::buddy::BuddyAllocator;
use mm::frame::meta::FrameTable;
use mm::frame::node::NodeMap;
use mm::mapping::region::SharedRegion;
use mm::mapping::vma::{HugePolicy, SharedBacking, VmaFlags};
use mm::ops::contig::ContigOptions;
use mm::ops::huge::HugeError;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const FRAMES: u64 = 8192;
const CYCLES: usize = 150;

#[test]
fn writers_on_three_cpus_never_lose_data_while_a_fourth_promotes_and_splits() {
    let mem = Arena::new(FRAMES);
    let records = FrameTable::boxed_records(FRAMES as usize);
    let table = FrameTable::new(&records).unwrap();
    let mut buddy = BuddyAllocator::new(table);
    buddy.add_free_range(Pfn(1), Pfn(FRAMES)).unwrap();
    let frames = BuddyFrames::new(buddy, NodeMap::single(Pfn(0), Pfn(FRAMES)));
    let tlb = EmuTlb::default();
    let mm = Mm::new(&mem, &frames, &tlb, None);
    let a = mm.new_space().unwrap();
    let base = 0x4000_0000u64;
    mm.map_anon(
        &a,
        base,
        3 * M2,
        VmaFlags::private(HugePolicy::OnRequest, true),
    )
    .unwrap();
    for i in 0..3 * M2 / K4 {
        mm.handle_fault(&a, base + i * K4, true).unwrap();
    }
    let r = mm
        .make_vma_contiguous(&a, base, &ContigOptions::default())
        .unwrap();
    assert_eq!(r.after.aligned_2m, 3, "{r:?}");
    let pa0 = a.translate(base).unwrap().pa.as_u64();
    let done = AtomicBool::new(false);
    let rounds = AtomicUsize::new(0);
    let promoted = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for w in 0..3usize {
            let (mm, mem, tlb, a, done, rounds) = (&mm, &mem, &tlb, &a, &done, &rounds);
            scope.spawn(move || {
                a.cpus().insert(w as u32);
                let cpu = EmuCpu::new(mm, mem, tlb, w);
                let range = base + w as u64 * M2;
                let mut value = 0u64;
                while !done.load(Ordering::Acquire) {
                    value += 1;
                    let offs = [0, (value % 512) * K4 + 8, M2 - 8];
                    for &o in &offs {
                        cpu.access(a, range + o, true, |x| {
                            x.store(value ^ o, Ordering::Release)
                        });
                    }
                    for &o in &offs {
                        let got = cpu.access(a, range + o, false, |x| x.load(Ordering::Acquire));
                        assert_eq!(got, value ^ o, "writer {w} lost a write at +{o:#x}");
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                a.cpus().remove(w as u32);
            });
        }
        let (mm, a, done, promoted) = (&mm, &a, &done, &promoted);
        scope.spawn(move || {
            for c in 0..CYCLES {
                let range = base + (c as u64 % 3) * M2;
                match mm.promote(a, range, PageSize::Size2M) {
                    Ok(()) => {
                        promoted.fetch_add(1, Ordering::Relaxed);
                        assert_eq!(a.translate(range).unwrap().size, PageSize::Size2M);
                        assert_eq!(mm.split_huge(a, range + 5 * K4), Ok(PageSize::Size4K));
                    }
                    // A block momentarily held by a fault's pending reference.
                    Err(HugeError::Busy) => {}
                    Err(e) => panic!("promote {range:#x}: {e:?}"),
                }
            }
            done.store(true, Ordering::Release);
        });
    });
    assert!(rounds.load(Ordering::Relaxed) > 0);
    assert!(promoted.load(Ordering::Relaxed) > CYCLES / 2);
    let stat = mm.vmstat();
    assert_eq!(
        stat.get(Event::Promote2m),
        promoted.load(Ordering::Relaxed) as u64
    );
    assert_eq!(stat.get(Event::Split2m), stat.get(Event::Promote2m));
    assert_eq!(
        a.translate(base).unwrap().pa.as_u64(),
        pa0,
        "the data never moved"
    );
    mm.rmap_audit().unwrap();
    frames.lock().audit().unwrap();
    mm.destroy_space(&a).unwrap();
    assert_eq!(frames.lock().free_frames(), FRAMES as usize - 1);
}

/// Sets the flag that stops the writers when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[test]
fn writers_in_two_spaces_never_lose_data_while_their_shared_range_is_promoted_and_split() {
    let mem = Arena::new(FRAMES);
    let records = FrameTable::boxed_records(FRAMES as usize);
    let table = FrameTable::new(&records).unwrap();
    let mut buddy = BuddyAllocator::new(table);
    buddy.add_free_range(Pfn(1), Pfn(FRAMES)).unwrap();
    let frames = BuddyFrames::new(buddy, NodeMap::single(Pfn(0), Pfn(FRAMES)));
    let tlb = EmuTlb::default();
    let mm = Mm::new(&mem, &frames, &tlb, None);
    let region = SharedRegion::new(2 * M2).unwrap();
    let flags = VmaFlags {
        shared: Some(SharedBacking {
            region: region.clone(),
            offset: 0,
        }),
        ..VmaFlags::private(HugePolicy::OnRequest, true)
    };
    let spaces = [mm.new_space().unwrap(), mm.new_space().unwrap()];
    let bases = [0x4000_0000u64, 0x1_0000_0000u64];
    for (s, &base) in spaces.iter().zip(&bases) {
        mm.map_anon(s, base, 2 * M2, flags.clone()).unwrap();
        mm.populate(s, base, 2 * M2).unwrap();
    }
    // Two 2 MiB region blocks, split into 4 KiB blocks: contiguous, promotable.
    for r in 0..2 {
        assert_eq!(
            mm.split_huge(&spaces[0], bases[0] + r * M2),
            Ok(PageSize::Size4K)
        );
    }
    let pa0 = spaces[1].translate(bases[1]).unwrap().pa.as_u64();
    let done = AtomicBool::new(false);
    let rounds = AtomicUsize::new(0);
    let promoted = AtomicUsize::new(0);
    // (space, 2 MiB range, byte lane): writers 0 and 1 share range 0 from both spaces.
    let writers = [(0usize, 0u64, 0u64), (1, 0, 16), (1, 1, 0)];
    std::thread::scope(|scope| {
        for (w, &(si, r, lane)) in writers.iter().enumerate() {
            let (mm, mem, tlb, done, rounds) = (&mm, &mem, &tlb, &done, &rounds);
            let s = &spaces[si];
            let range = bases[si] + r * M2;
            scope.spawn(move || {
                s.cpus().insert(w as u32);
                let cpu = EmuCpu::new(mm, mem, tlb, w);
                let mut value = 0u64;
                while !done.load(Ordering::Acquire) {
                    value += 1;
                    let offs = [lane, (value % 512) * K4 + 32 + lane, M2 - 64 + lane];
                    for &o in &offs {
                        cpu.access(s, range + o, true, |x| {
                            x.store(value ^ o, Ordering::Release)
                        });
                    }
                    for &o in &offs {
                        let got = cpu.access(s, range + o, false, |x| x.load(Ordering::Acquire));
                        assert_eq!(got, value ^ o, "writer {w} lost a write at +{o:#x}");
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                s.cpus().remove(w as u32);
            });
        }
        let (mm, spaces, done, promoted) = (&mm, &spaces, &done, &promoted);
        scope.spawn(move || {
            // The writers stop even when this thread fails an assertion.
            let _stop = StopOnDrop(done);
            for c in 0..CYCLES {
                let r = c as u64 % 2;
                let (from, other) = ((c / 2) % 2, 1 - (c / 2) % 2);
                match mm.promote(&spaces[from], bases[from] + r * M2, PageSize::Size2M) {
                    Ok(()) => {
                        promoted.fetch_add(1, Ordering::Relaxed);
                        for (s, &base) in spaces.iter().zip(&bases) {
                            let t = s.translate(base + r * M2).unwrap();
                            assert_eq!(t.size, PageSize::Size2M, "both spaces huge");
                        }
                        let at = bases[other] + r * M2 + 5 * K4;
                        assert_eq!(mm.split_huge(&spaces[other], at), Ok(PageSize::Size4K));
                    }
                    // A block momentarily held by a fault's pending reference.
                    Err(HugeError::Busy) => {}
                    Err(e) => panic!("promote range {r} from space {from}: {e:?}"),
                }
            }
        });
    });
    assert!(rounds.load(Ordering::Relaxed) > 0);
    assert!(promoted.load(Ordering::Relaxed) > CYCLES / 2);
    let stat = mm.vmstat();
    assert_eq!(
        stat.get(Event::Promote2m),
        promoted.load(Ordering::Relaxed) as u64
    );
    assert_eq!(stat.get(Event::Split2m), stat.get(Event::Promote2m) + 2);
    assert_eq!(
        spaces[0].translate(bases[0]).unwrap().pa.as_u64(),
        pa0,
        "the data never moved"
    );
    mm.rmap_audit().unwrap();
    frames.lock().audit().unwrap();
    for s in &spaces {
        mm.destroy_space(s).unwrap();
    }
    drop(flags);
    assert_eq!(mm.release_region(&region), Ok(1024));
    assert_eq!(frames.lock().free_frames(), FRAMES as usize - 1);
}
