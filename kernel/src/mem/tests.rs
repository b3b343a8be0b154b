//! In-kernel tests of the memory layer on real page tables and the real memory map.

use super::kernel_space::{self, KernelTableAlloc};
use super::{frames, heap, physmap, MemError};
use crate::arch::probe;
use crate::harness::{KernelTest, TestContext, TestResult};
use crate::{check, check_eq, check_ok, skip};
use alloc::vec::Vec;
use mm::base::addr::{PageSize, Pfn, PAGE_SIZE};
use mm::frame::buddy::{AllocError, FreeError, MigrateType};
use mm::frame::meta::FrameFlags;
use mm::paging::{MapError, RangeError, UnmapError};
use x86_64::structures::paging::PageTableFlags as F;
use x86_64::{PhysAddr, VirtAddr};

/// Virtual window for test mappings (unused by anything else in the kernel).
const TEST_VA: u64 = 0xFFFF_A000_0000_0000;

/// The tests of this module.
pub const TESTS: &[KernelTest] = &[
    KernelTest {
        name: "mem::audit_after_boot",
        run: audit_after_boot,
    },
    KernelTest {
        name: "mem::one_gib_block_after_boot",
        run: one_gib_block_after_boot,
    },
    KernelTest {
        name: "mem::every_frame_alloc_then_random_free_restores_free_areas",
        run: every_frame_roundtrip,
    },
    KernelTest {
        name: "mem::bad_frees_are_typed_errors_and_change_nothing",
        run: bad_frees,
    },
    KernelTest {
        name: "mem::alloc_at_and_alloc_range",
        run: alloc_at_and_range,
    },
    KernelTest {
        name: "mem::unmovable_allocations_share_pageblocks",
        run: unmovable_grouping,
    },
    KernelTest {
        name: "mem::map_write_unmap_4k_2m_1g",
        run: map_write_unmap,
    },
    KernelTest {
        name: "mem::bad_mappings_are_typed_errors",
        run: bad_mappings,
    },
    KernelTest {
        name: "mem::partial_protect_splits_a_2m_leaf",
        run: partial_protect_splits,
    },
    KernelTest {
        name: "mem::empty_page_tables_are_freed",
        run: empty_tables_freed,
    },
    KernelTest {
        name: "mem::heap_grows_when_exhausted",
        run: heap_grows,
    },
    KernelTest {
        name: "mem::kernel_image_is_w_xor_x",
        run: kernel_w_xor_x,
    },
    KernelTest {
        name: "mem::stack_guard_page_faults",
        run: stack_guard_faults,
    },
    KernelTest {
        name: "mem::pcp_double_free_is_a_typed_error",
        run: pcp_double_free,
    },
    KernelTest {
        name: "mem::pcp_concurrent_alloc_free_then_drain_restores_free_areas",
        run: pcp_concurrent,
    },
];

/// A small xorshift generator for test randomness.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn audit() -> TestResult {
    let r = frames::drain_and_audit();
    check!(r.is_ok(), "allocator audit failed: {r:?}");
    Ok(())
}

fn audit_after_boot(_: &TestContext) -> TestResult {
    let report = frames::with_buddy(|b| b.audit());
    check!(report.is_ok(), "audit: {report:?}");
    let total = frames::with_buddy(|b| b.total_frames());
    check!(total > 0);
    Ok(())
}

fn one_gib_block_after_boot(_: &TestContext) -> TestResult {
    // Whether the memory map has a 1 GiB-aligned usable gigabyte outside the frame table.
    let bm = super::boot_memory();
    let ft = bm.frame_table;
    let gib = PageSize::Size1G.bytes();
    let possible = bm.regions[..bm.n_regions]
        .iter()
        .any(|&(start, end, kind)| {
            kind == bootloader_api::info::MemoryRegionKind::Usable
                && (start.next_multiple_of(gib)..end)
                    .step_by(gib as usize)
                    .any(|g| g + gib <= end && (g + gib <= ft.start || g >= ft.start + ft.bytes))
        });
    let r = frames::with_buddy(|b| b.alloc(PageSize::Size1G.order(), MigrateType::Movable));
    if !possible {
        check_eq!(r, Err(AllocError::OutOfMemory));
        audit()?;
        skip!("the memory map has no usable 1 GiB-aligned gigabyte outside the frame table");
    }
    let pfn = check_ok!(r);
    check!(
        pfn.is_aligned(18),
        "1 GiB block {pfn:?} is not 1 GiB aligned"
    );
    check_eq!(frames::with_buddy(|b| b.free(pfn, 18)), Ok(()));
    audit()
}

fn every_frame_roundtrip(ctx: &TestContext) -> TestResult {
    check!(super::pcp::drain_all(frames::table()).is_ok());
    // Reserve the bookkeeping first: the heap must not need frames while none are left.
    let mut pfns: Vec<Pfn> = Vec::with_capacity(frames::with_buddy(|b| b.free_frames()) + 4096);
    let before = frames::with_buddy(|b| b.free_areas());
    loop {
        match frames::with_buddy(|b| b.alloc(0, MigrateType::Movable)) {
            Ok(pfn) => pfns.push(pfn),
            Err(AllocError::OutOfMemory) => break,
            Err(e) => check!(false, "order-0 allocation failed: {e:?}"),
        }
    }
    check!(pfns.len() <= pfns.capacity(), "the frame list had to grow");
    check_eq!(frames::with_buddy(|b| b.free_frames()), 0);
    let mut rng = Rng::new(ctx.seed);
    for i in (1..pfns.len()).rev() {
        pfns.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &pfn in &pfns {
        check_eq!(frames::with_buddy(|b| b.free(pfn, 0)), Ok(()));
    }
    let after = frames::with_buddy(|b| b.free_areas());
    check_eq!(before, after);
    crate::sprint!("({} frames) ", pfns.len());
    audit()
}

fn bad_frees(_: &TestContext) -> TestResult {
    let before = frames::with_buddy(|b| b.free_areas());
    let block = check_ok!(frames::with_buddy(|b| b.alloc(2, MigrateType::Movable)));
    let mid = frames::with_buddy(|b| b.free_areas());
    check_eq!(
        frames::with_buddy(|b| b.free(block, 1)),
        Err(FreeError::WrongOrder { allocated: 2 })
    );
    check_eq!(
        frames::with_buddy(|b| b.free(block.add(1), 0)),
        Err(FreeError::NotHead)
    );
    let total = frames::table().len() as u64;
    check_eq!(
        frames::with_buddy(|b| b.free(Pfn(total + 10), 0)),
        Err(FreeError::OutOfRange)
    );
    check_eq!(
        frames::with_buddy(|b| b.free(Pfn(0), 0)),
        Err(FreeError::NotAllocated)
    );
    check_eq!(frames::with_buddy(|b| b.free_areas()), mid);
    check_eq!(frames::with_buddy(|b| b.free(block, 2)), Ok(()));
    check_eq!(
        frames::with_buddy(|b| b.free(block, 2)),
        Err(FreeError::DoubleFree)
    );
    check_eq!(frames::with_buddy(|b| b.free_areas()), before);
    audit()
}

fn alloc_at_and_range(_: &TestContext) -> TestResult {
    // A free 2 MiB-aligned block: take exactly it back with alloc_at.
    let pfn = check_ok!(frames::with_buddy(|b| b.alloc(9, MigrateType::Movable)));
    check_eq!(frames::with_buddy(|b| b.free(pfn, 9)), Ok(()));
    check_eq!(
        frames::with_buddy(|b| b.alloc_at(pfn.add(8), 3, MigrateType::Movable)),
        Ok(pfn.add(8))
    );
    check_eq!(
        frames::with_buddy(|b| b.alloc_at(pfn.add(8), 0, MigrateType::Movable)),
        Err(AllocError::NotFree)
    );
    check_eq!(
        frames::with_buddy(|b| b.alloc_at(pfn.add(1), 3, MigrateType::Movable)),
        Err(AllocError::Unaligned)
    );
    check_eq!(frames::with_buddy(|b| b.free(pfn.add(8), 3)), Ok(()));
    // A run of 1000 frames starting on a 2 MiB boundary.
    let run = check_ok!(frames::with_buddy(|b| b.alloc_range(
        1000,
        9,
        MigrateType::Movable
    )));
    check!(run.is_aligned(9));
    for i in 0..1000 {
        check!(!frames::with_buddy(|b| b.is_free(run.add(i))));
    }
    check_eq!(frames::with_buddy(|b| b.free_range(run, 1000)), Ok(()));
    // A batch of exact allocations: a frame that sits in this CPU's frame cache (drained
    // and taken), a free one in the zone, and one in use (refused), one result each.
    let cached = check_ok!(frames::alloc(0, MigrateType::Movable));
    check_eq!(frames::free(cached.addr(), 0), Ok(()));
    let in_cache = frames::table()
        .get(cached)
        .is_some_and(|m| m.flags().contains(FrameFlags::CACHED));
    check!(
        in_cache,
        "a freed order-0 frame should wait in the frame cache"
    );
    let free = check_ok!(frames::with_buddy(|b| b.alloc(0, MigrateType::Movable)));
    let used = check_ok!(frames::with_buddy(|b| b.alloc(0, MigrateType::Movable)));
    check_eq!(frames::with_buddy(|b| b.free(free, 0)), Ok(()));
    let mut got = Vec::new();
    let asked = [(cached, 0), (free, 0), (used, 0)];
    frames::alloc_at_batch(&asked, MigrateType::Movable, &mut got);
    check_eq!(
        got,
        [
            Ok(cached),
            Ok(free),
            Err(MemError::Alloc(AllocError::NotFree))
        ]
    );
    for p in [cached, free, used] {
        check_eq!(frames::with_buddy(|b| b.free(p, 0)), Ok(()));
    }
    audit()
}

fn unmovable_grouping(_: &TestContext) -> TestResult {
    let mut movable = Vec::with_capacity(1000);
    let mut unmovable = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let m = frames::with_buddy(|b| b.alloc(0, MigrateType::Movable));
        let u = frames::with_buddy(|b| b.alloc(0, MigrateType::Unmovable));
        check!(m.is_ok() && u.is_ok());
        movable.extend(m.ok());
        unmovable.extend(u.ok());
    }
    let mut blocks: Vec<u64> = unmovable.iter().map(|p| p.0 >> 9).collect();
    blocks.sort_unstable();
    blocks.dedup();
    // 1000 frames fit in 2 pageblocks; the pageblocks already partly used by the kernel's
    // own unmovable allocations may take some of them.
    check!(
        blocks.len() <= 4,
        "unmovable frames spread over {} pageblocks",
        blocks.len()
    );
    check!(
        movable.iter().all(|m| !blocks.contains(&(m.0 >> 9))),
        "a movable frame landed in an unmovable pageblock"
    );
    for p in movable.into_iter().chain(unmovable) {
        check_eq!(frames::with_buddy(|b| b.free(p, 0)), Ok(()));
    }
    audit()
}

/// Map the block of `size` at `pfn` (ours) at `va`, fill it through the mapping, check
/// the bytes through the linear map, unmap it, check the old address faults, free the
/// block.
fn roundtrip(va: u64, pfn: Pfn, size: PageSize, pattern: u64) -> TestResult {
    let pa = pfn.addr();
    let mapped = kernel_space::with_kernel(|pt, flush| {
        pt.map(
            va,
            pa,
            size,
            F::WRITABLE | F::NO_EXECUTE,
            &mut KernelTableAlloc,
            flush,
        )
    });
    check_eq!(mapped, Ok(()));
    let words = size.bytes() / 8;
    for i in [0, 1, words / 2, words - 1] {
        // SAFETY: va..va+size is mapped writable above to a block we own.
        check!(unsafe { probe::write_u64(va + i * 8, pattern ^ i) });
    }
    for i in [0, 1, words / 2, words - 1] {
        let through_linear_map = probe::read_u64(physmap::virt(pa + i * 8).as_u64());
        check_eq!(through_linear_map, Some(pattern ^ i));
    }
    let t = kernel_space::with_kernel(|pt, _| pt.query(va + 8));
    check!(
        matches!(t, Some(t) if t.size == size && t.pa == pa + 8u64),
        "query: {t:?}"
    );
    let leaf = kernel_space::with_kernel(|pt, flush| pt.unmap(va, size, flush));
    check!(
        matches!(leaf, Ok(l) if l.pa == pa && l.is_dirty()),
        "unmap: {leaf:?}"
    );
    check_eq!(probe::read_u64(va), None);
    check_eq!(probe::read_u64(va + size.bytes() - 8), None);
    check_eq!(frames::with_buddy(|b| b.free(pfn, size.order())), Ok(()));
    Ok(())
}

fn map_write_unmap(ctx: &TestContext) -> TestResult {
    let alloc =
        |size: PageSize| frames::with_buddy(|b| b.alloc(size.order(), MigrateType::Movable));
    let pfn = check_ok!(alloc(PageSize::Size4K));
    roundtrip(TEST_VA, pfn, PageSize::Size4K, ctx.seed)?;
    let pfn = check_ok!(alloc(PageSize::Size2M));
    roundtrip(TEST_VA + (2 << 20), pfn, PageSize::Size2M, ctx.seed << 1)?;
    audit()?;
    let pfn = match alloc(PageSize::Size1G) {
        Err(AllocError::OutOfMemory) => {
            skip!("4 KiB and 2 MiB round trips passed; no free 1 GiB block for the 1 GiB one")
        }
        r => check_ok!(r),
    };
    roundtrip(TEST_VA + (1 << 30), pfn, PageSize::Size1G, ctx.seed << 2)?;
    audit()
}

fn bad_mappings(_: &TestContext) -> TestResult {
    let frame = check_ok!(frames::alloc_zeroed(0, MigrateType::Movable));
    let flags = F::WRITABLE | F::NO_EXECUTE;
    let r = kernel_space::with_kernel(|pt, flush| {
        let first = pt.map(
            TEST_VA,
            frame,
            PageSize::Size4K,
            flags,
            &mut KernelTableAlloc,
            flush,
        );
        let snapshot: Vec<_> = pt.walk(TEST_VA, TEST_VA + (1 << 30)).collect();
        let again = pt.map(
            TEST_VA,
            frame,
            PageSize::Size4K,
            flags,
            &mut KernelTableAlloc,
            flush,
        );
        let over = pt.map(
            TEST_VA,
            PhysAddr::new(0),
            PageSize::Size2M,
            flags,
            &mut KernelTableAlloc,
            flush,
        );
        let unaligned = pt.map(
            TEST_VA + 4096,
            PhysAddr::new(0),
            PageSize::Size2M,
            flags,
            &mut KernelTableAlloc,
            flush,
        );
        let unaligned_pa = pt.map(
            TEST_VA + (2 << 20),
            PhysAddr::new(4096),
            PageSize::Size2M,
            flags,
            &mut KernelTableAlloc,
            flush,
        );
        let not_mapped = pt.unmap(TEST_VA + 4096, PageSize::Size4K, flush);
        let wrong_size = pt.unmap(TEST_VA, PageSize::Size2M, flush);
        let non_canonical = pt.map(
            0x0000_8000_0000_0000,
            frame,
            PageSize::Size4K,
            flags,
            &mut KernelTableAlloc,
            flush,
        );
        let same = pt.walk(TEST_VA, TEST_VA + (1 << 30)).collect::<Vec<_>>() == snapshot;
        let cleanup = pt.unmap(TEST_VA, PageSize::Size4K, flush).map(|l| l.pa);
        (
            first,
            again,
            over,
            unaligned,
            unaligned_pa,
            not_mapped,
            wrong_size,
            non_canonical,
            same,
            cleanup,
        )
    });
    check_eq!(r.0, Ok(()));
    check_eq!(r.1, Err(MapError::AlreadyMapped));
    check_eq!(r.2, Err(MapError::AlreadyMapped));
    check_eq!(r.3, Err(MapError::Unaligned));
    check_eq!(r.4, Err(MapError::Unaligned));
    check_eq!(r.5.map(|l| l.pa), Err(UnmapError::NotMapped));
    check_eq!(r.6.map(|l| l.pa), Err(UnmapError::SizeMismatch));
    check_eq!(r.7, Err(MapError::NonCanonical));
    check!(r.8, "a failed operation changed the page tables");
    check_eq!(r.9, Ok(frame));
    check_eq!(frames::free(frame, 0), Ok(()));
    audit()
}

fn partial_protect_splits(ctx: &TestContext) -> TestResult {
    let pfn = check_ok!(frames::with_buddy(|b| b.alloc(9, MigrateType::Movable)));
    let va = TEST_VA + (4 << 20);
    let rw = F::WRITABLE | F::NO_EXECUTE;
    check_eq!(
        kernel_space::with_kernel(|pt, f| pt.map(
            va,
            pfn.addr(),
            PageSize::Size2M,
            rw,
            &mut KernelTableAlloc,
            f
        )),
        Ok(())
    );
    for i in 0..512u64 {
        // SAFETY: the 2 MiB block is ours and mapped writable.
        check!(unsafe { probe::write_u64(va + i * PAGE_SIZE, ctx.seed ^ i) });
    }
    let ro_page = va + 7 * PAGE_SIZE;
    let protect = || {
        kernel_space::with_kernel(|pt, f| {
            pt.protect_range(ro_page, ro_page + PAGE_SIZE, F::NO_EXECUTE, f)
        })
    };
    check_eq!(
        protect(),
        Err(RangeError::Straddles {
            va: VirtAddr::new(va),
            size: PageSize::Size2M
        })
    );
    // The split's first step makes the leaf non-present and shoots it down when
    // `with_kernel` returns; only then is the table of 4 KiB leaves linked.
    let token = kernel_space::with_kernel(|pt, f| {
        pt.begin_split(va, PageSize::Size2M, &mut KernelTableAlloc, f)
    });
    check!(token.is_ok(), "{:?}", token);
    let Ok(token) = token else { return Ok(()) };
    let finished = kernel_space::with_kernel(|pt, _| pt.finish_split(token));
    check!(finished.is_ok(), "{:?}", finished);
    check_eq!(protect(), Ok(()));
    let t = kernel_space::with_kernel(|pt, _| (pt.query(ro_page), pt.query(va)));
    check!(
        matches!(t.0, Some(t) if t.size == PageSize::Size4K && !t.flags.contains(F::WRITABLE)),
        "{:?}",
        t.0
    );
    check!(
        matches!(t.1, Some(t) if t.size == PageSize::Size4K && t.flags.contains(F::WRITABLE)),
        "{:?}",
        t.1
    );
    let wrote = {
        // SAFETY: the page is ours; the write must fault since it is now read-only.
        unsafe { probe::write_u64(ro_page, 0) }
    };
    check!(!wrote, "write to a read-only page succeeded");
    for i in 0..512u64 {
        check_eq!(probe::read_u64(va + i * PAGE_SIZE), Some(ctx.seed ^ i));
    }
    let mut n = 0;
    let r = kernel_space::with_kernel(|pt, f| pt.unmap_range(va, va + (2 << 20), f, |_| n += 1));
    check_eq!(r, Ok(()));
    check_eq!(n, 512);
    check_eq!(frames::with_buddy(|b| b.free(pfn, 9)), Ok(()));
    audit()
}

fn empty_tables_freed(_: &TestContext) -> TestResult {
    let available = || frames::with_buddy(|b| b.free_frames()) + super::pcp::cached();
    let before = available();
    let frame = check_ok!(frames::alloc_zeroed(0, MigrateType::Movable));
    // A fresh corner of the address space: a new PD and PT are needed (every kernel
    // PML4 entry has its PDPT from boot on, shared by all address spaces, never freed).
    let va = TEST_VA + (200 << 30);
    let flags = F::WRITABLE | F::NO_EXECUTE;
    check_eq!(
        kernel_space::with_kernel(|pt, f| pt.map(
            va,
            frame,
            PageSize::Size4K,
            flags,
            &mut KernelTableAlloc,
            f
        )),
        Ok(())
    );
    check_eq!(available(), before - 3);
    let leaf = kernel_space::with_kernel(|pt, f| pt.unmap(va, PageSize::Size4K, f));
    check!(leaf.is_ok());
    check_eq!(frames::free(frame, 0), Ok(()));
    check_eq!(available(), before);
    let pdpt = kernel_space::with_kernel(|pt, _| {
        mm::backend::phys::PhysMem::word(&physmap::PHYS, pt.root() + ((va >> 39) & 511) * 8)
            .load(core::sync::atomic::Ordering::Acquire)
    });
    check!(
        kernel_space::is_permanent_table(PhysAddr::new(pdpt & mm::paging::ADDR_MASK)),
        "the PML4 entry lost its shared PDPT: {pdpt:#x}"
    );
    audit()
}

fn heap_grows(_: &TestContext) -> TestResult {
    let (size_before, _) = heap::usage();
    let n = 8 << 20;
    let mut v: Vec<u64> = Vec::with_capacity(n);
    for i in 0..n as u64 {
        v.push(i.wrapping_mul(0x9E37_79B9));
    }
    let (size_after, used) = heap::usage();
    check!(
        size_after >= size_before + n * 8,
        "heap did not grow: {size_before} -> {size_after}"
    );
    check!(used >= n * 8);
    check!(v
        .iter()
        .enumerate()
        .all(|(i, &x)| x == (i as u64).wrapping_mul(0x9E37_79B9)));
    drop(v);
    audit()
}

fn kernel_w_xor_x(_: &TestContext) -> TestResult {
    let text = kernel_w_xor_x as *const () as u64;
    check!(probe::read_u64(text).is_some());
    let wrote = {
        // SAFETY: the write must fault (text is read-only); if it did not, the test
        // fails and the run ends anyway.
        unsafe { probe::write_u64(text, 0) }
    };
    check!(!wrote, "kernel text is writable");
    let t = kernel_space::with_kernel(|pt, _| pt.query(text));
    check!(
        matches!(t, Some(t) if !t.flags.contains(F::WRITABLE) && !t.flags.contains(F::NO_EXECUTE))
    );
    static DATA: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    let t = kernel_space::with_kernel(|pt, _| pt.query(&DATA as *const _ as u64));
    check!(
        matches!(t, Some(t) if t.flags.contains(F::WRITABLE) && t.flags.contains(F::NO_EXECUTE))
    );
    Ok(())
}

fn stack_guard_faults(_: &TestContext) -> TestResult {
    let guard = kernel_space::STACKS_BASE;
    check_eq!(probe::read_u64(guard), None);
    check!(crate::arch::guard::owner_of(guard).is_some());
    let here = 0u64;
    let sp = &here as *const u64 as u64;
    check!(
        sp > guard + PAGE_SIZE && sp < guard + kernel_space::STACK_SLOT,
        "running on stack {sp:#x}"
    );
    Ok(())
}

fn pcp_double_free(_: &TestContext) -> TestResult {
    let frame = check_ok!(frames::alloc(0, MigrateType::Movable));
    check_eq!(frames::free(frame.addr(), 0), Ok(()));
    check_eq!(
        frames::free(frame.addr(), 0),
        Err(super::MemError::Free(FreeError::DoubleFree))
    );
    audit()
}

fn pcp_concurrent(ctx: &TestContext) -> TestResult {
    check!(super::pcp::drain_all(frames::table()).is_ok());
    let before = frames::with_buddy(|b| b.free_areas());
    let seed = ctx.seed;
    let results = crate::smp::broadcast(move |cpu| {
        let mut rng = Rng::new(seed ^ u64::from(cpu) << 40);
        let mut held: Vec<Pfn> = Vec::with_capacity(256);
        let mut ok = true;
        for _ in 0..20_000 {
            if held.len() < 256 && (held.is_empty() || rng.below(2) == 0) {
                let mt = if rng.below(4) == 0 {
                    MigrateType::Unmovable
                } else {
                    MigrateType::Movable
                };
                match frames::alloc(0, mt) {
                    Ok(p) => held.push(p),
                    Err(_) => ok = false,
                }
            } else {
                let i = rng.below(held.len() as u64) as usize;
                ok &= frames::free(held.swap_remove(i).addr(), 0).is_ok();
            }
        }
        for p in held {
            ok &= frames::free(p.addr(), 0).is_ok();
        }
        ok
    });
    check!(
        matches!(&results, Ok(r) if r.iter().all(|(_, ok)| *ok)),
        "{results:?}"
    );
    check!(super::pcp::cached() > 0, "the caches were never used");
    check!(super::pcp::drain_all(frames::table()).is_ok());
    check_eq!(super::pcp::cached(), 0);
    check_eq!(frames::with_buddy(|b| b.free_areas()), before);
    audit()
}
