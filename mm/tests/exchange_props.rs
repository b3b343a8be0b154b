//! Exchange under concurrency, over the emulated MMU of `aspace::testing` (each CPU's
//! "TLB" lives for one access, so a shootdown waits for the accesses in flight): writers
//! on three CPUs keep writing changing values into 4 KiB and 2 MiB pages, private and
//! shared between two address spaces, and read them back, while a fourth CPU keeps
//! exchanging those pages with each other in batches. No write is lost, no frame is
//! allocated, and the audits are clean.
#![cfg(feature = "std")]

use mm::aspace::testing::{EmuCpu, EmuTlb};
use mm::aspace::{AddressSpace, Mm};
use mm::backend::phys::{Arena, PhysMem};
use mm::backend::source::{BuddyFrames, FrameSource};
use mm::base::addr::Pfn;
use mm::frame::buddy::BuddyAllocator;
use mm::frame::meta::FrameTable;
use mm::frame::node::NodeMap;
use mm::mapping::region::SharedRegion;
use mm::mapping::vma::{HugePolicy, SharedBacking, VmaFlags};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const FRAMES: u64 = 16384;
const EXCHANGES: usize = 600;

fn head<'a, M: PhysMem>(mm: &Mm<'a, M>, s: &AddressSpace<'a, M>, va: u64) -> Option<Pfn> {
    let t = s.translate(va)?;
    mm.frames().frame_table().head_of(Pfn::containing(t.pa))
}

#[test]
fn writers_on_three_cpus_never_lose_data_while_a_fourth_exchanges_their_pages() {
    let mem = Arena::new(FRAMES);
    let records = FrameTable::boxed_records(FRAMES as usize);
    let table = FrameTable::new(&records).unwrap();
    let mut buddy = BuddyAllocator::new(table);
    buddy.add_free_range(Pfn(1), Pfn(FRAMES)).unwrap();
    let frames = BuddyFrames::new(buddy, NodeMap::single(Pfn(0), Pfn(FRAMES)));
    let tlb = EmuTlb::default();
    let mm = Mm::new(&mem, &frames, &tlb, None);
    let a = mm.new_space().unwrap();
    let b = mm.new_space().unwrap();
    let region = SharedRegion::new(3 * M2).unwrap();
    let private = |huge| VmaFlags::private(huge, true);
    let shared = |offset| VmaFlags {
        shared: Some(SharedBacking {
            region: region.clone(),
            offset,
        }),
        ..private(HugePolicy::Always)
    };
    // Per writer w: two 4 KiB pages (one in A, one in B), a private 2 MiB page in A and a
    // 2 MiB page of the region mapped in A and B.
    let base = |w: u64| 0x4000_0000 + w * 0x1000_0000;
    for w in 0..3u64 {
        let v = base(w);
        mm.map_anon(&a, v, K4, private(HugePolicy::Never)).unwrap();
        mm.map_anon(&b, v, K4, private(HugePolicy::Never)).unwrap();
        mm.map_anon(&a, v + M2, M2, private(HugePolicy::Always))
            .unwrap();
        mm.map_anon(&a, v + 2 * M2, M2, shared(w * M2)).unwrap();
        mm.map_anon(&b, v + 2 * M2, M2, shared(w * M2)).unwrap();
        mm.populate(&a, v, K4).unwrap();
        mm.populate(&b, v, K4).unwrap();
        mm.populate(&a, v + M2, 2 * M2).unwrap();
        mm.populate(&b, v + 2 * M2, M2).unwrap();
    }
    let allocations = frames.allocations();
    let done = AtomicBool::new(false);
    let exchanged = AtomicUsize::new(0);
    let rounds = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for w in 0..3usize {
            let (mm, mem, tlb, a, b, done, rounds) = (&mm, &mem, &tlb, &a, &b, &done, &rounds);
            scope.spawn(move || {
                a.cpus().insert(w as u32);
                b.cpus().insert(w as u32);
                let cpu = EmuCpu::new(mm, mem, tlb, w);
                let v = base(w as u64);
                let mut value = 0u64;
                while !done.load(Ordering::Acquire) {
                    value += 1;
                    let (wr, rd) = if value % 2 == 0 {
                        (&**a, &**b)
                    } else {
                        (&**b, &**a)
                    };
                    let pages = [
                        (v, K4, &**a, &**a),
                        (v, K4, &**b, &**b),
                        (v + M2, M2, &**a, &**a),
                        (v + 2 * M2, M2, wr, rd),
                    ];
                    for (k, &(va, len, ws, rs)) in pages.iter().enumerate() {
                        // A value per page, so a page that shows another's data is caught.
                        let tag = value * 8 + k as u64;
                        let offs = [0, len / 2 + 8, len - 8];
                        for &o in &offs {
                            cpu.access(ws, va + o, true, |x| x.store(tag ^ o, Ordering::Release));
                        }
                        for &o in &offs {
                            let got = cpu.access(rs, va + o, false, |x| x.load(Ordering::Acquire));
                            assert_eq!(got, tag ^ o, "writer {w} lost a write at {va:#x}+{o:#x}");
                        }
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                a.cpus().remove(w as u32);
                b.cpus().remove(w as u32);
            });
        }
        let (mm, a, b, done, exchanged) = (&mm, &a, &b, &done, &exchanged);
        scope.spawn(move || {
            let mut i = 0u64;
            while exchanged.load(Ordering::Relaxed) < EXCHANGES {
                i += 1;
                let (w, x) = (i % 3, (i + 1) % 3);
                // A batch of three pairs: A's and B's 4 KiB pages of one writer; a
                // private 2 MiB page with another writer's shared one; and two writers'
                // 4 KiB pages in A.
                let pairs: Vec<(Pfn, Pfn)> = [
                    (head(mm, a, base(w)), head(mm, b, base(w))),
                    (head(mm, a, base(w) + M2), head(mm, a, base(x) + 2 * M2)),
                    (head(mm, a, base(x)), head(mm, a, base((x + 1) % 3))),
                ]
                .into_iter()
                .filter_map(|(p, q)| Some((p?, q?)))
                .collect();
                for r in mm.exchange_batch(&pairs) {
                    match r {
                        Ok(()) => {
                            exchanged.fetch_add(1, Ordering::Relaxed);
                        }
                        // A head read just before a concurrent batch moved it.
                        Err(mm::ops::error::MigrateError::Changed) => {}
                        Err(e) => panic!("exchange: {e:?}"),
                    }
                }
            }
            done.store(true, Ordering::Release);
        });
    });
    assert!(rounds.load(Ordering::Relaxed) > 0, "the writers ran");
    assert_eq!(
        frames.allocations(),
        allocations,
        "exchange allocated frames"
    );
    mm.rmap_audit().unwrap();
    frames.lock().audit().unwrap();
    mm.destroy_space(&a).unwrap();
    mm.destroy_space(&b).unwrap();
    assert_eq!(mm.release_region(&region), Ok(3));
    mm.rmap_audit().unwrap();
    assert_eq!(frames.lock().free_frames(), FRAMES as usize - 1);
}
