//! In-kernel tests of address spaces on the machine: real page tables loaded in CR3 on
//! several CPUs, real shootdown IPIs, the real frame allocator and NUMA map.
//!
//! Tests touch user memory from kernel mode with the address space loaded on the CPU,
//! through the fault probes ([`probe::read_u64`], [`probe::write_u64`]): a fault the
//! address space resolves (demand-zero, a migration entry) is retried transparently, one
//! it cannot resolve makes the probe report failure instead of ending the run.

use super::{activate, deactivate, numa, KernelMm, Space};
use crate::arch::{probe, smp, timer};
use crate::harness::{KernelTest, TestContext, TestError, TestResult};
use crate::mem::tests::Rng;
use crate::mem::{frames, pcp};
use crate::percpu;
use crate::{check, check_eq, sprint};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use mm::aspace::{PinError, SpaceError};
use mm::backend::source::FrameSource;
use mm::base::addr::{PageSize, Pfn};
use mm::frame::buddy::MigrateType;
use mm::frame::node::NodeId;
use mm::mapping::region::SharedRegion;
use mm::mapping::vma::{HugePolicy, SharedBacking, VmaFlags};
use mm::ops::migrate::{Destination, MigrateError};
use mm::paging::Translation;
use x86_64::VirtAddr;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// Where test mappings start in the user half (1 GiB aligned).
const BASE: u64 = 0x0000_1000_0000_0000;
/// Order of a 1 GiB block.
const ORDER_1G: u8 = 18;

/// The tests of this module.
pub const TESTS: &[KernelTest] = &[
    KernelTest {
        name: "vm::demand_zero_faults_4k_2m_1g_on_every_cpu",
        run: demand_zero_faults,
    },
    KernelTest {
        name: "vm::shared_region_in_two_spaces_maps_one_frame",
        run: shared_region,
    },
    KernelTest {
        name: "vm::writers_on_3_cpus_vs_migrator_100k_migrations",
        run: writers_vs_migrator,
    },
    KernelTest {
        name: "vm::migrate_batch_with_injected_failures_reports_each_page",
        run: injected_failures,
    },
    KernelTest {
        name: "vm::bad_input_is_typed_and_changes_nothing",
        run: bad_input,
    },
    KernelTest {
        name: "vm::numa_move_range_to_node_keeps_huge_pages",
        run: numa_move,
    },
];

fn fail(message: String) -> TestError {
    TestError::Check {
        message,
        file: file!(),
        line: line!(),
    }
}

fn need_mm() -> Result<&'static KernelMm, TestError> {
    super::mm().ok_or_else(|| fail("address spaces are not set up".into()))
}

/// Free frames, those in the per-CPU caches included.
fn available() -> usize {
    frames::with_buddy(|b| b.free_frames()) + pcp::cached()
}

/// Free 1 GiB blocks in the allocator now.
fn free_1g_blocks() -> usize {
    frames::with_buddy(|b| b.free_areas()[ORDER_1G as usize])
}

fn read(va: u64) -> Option<u64> {
    probe::read_u64(va)
}

fn write(va: u64, value: u64) -> bool {
    // SAFETY: tests only write user addresses of their own VMAs (or addresses where the
    // write must fault), in the address space loaded on this CPU.
    unsafe { probe::write_u64(va, value) }
}

/// The block mapped at `va` in `space`: its head and the size of the leaf.
fn block_at(space: &Space, va: u64) -> Option<(Pfn, Translation)> {
    let t = space.translate(va)?;
    let head = super::frames()
        .frame_table()
        .head_of(Pfn::containing(t.leaf_base_pa))?;
    Some((head, t))
}

/// A hashed test value, never zero.
fn value(id: u64, generation: u64, word: u64) -> u64 {
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ generation.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ word.wrapping_mul(0x1656_67B1_9E37_79F9);
    x ^= x >> 31;
    x | 1
}

fn private(huge: HugePolicy) -> VmaFlags {
    VmaFlags::private(huge, true)
}

fn shared(region: &Arc<SharedRegion>, huge: HugePolicy) -> VmaFlags {
    VmaFlags {
        shared: Some(SharedBacking {
            region: region.clone(),
            offset: 0,
        }),
        ..private(huge)
    }
}

/// The address spaces and shared regions of a test, torn down in order at the end (or
/// when a check fails): unloaded, destroyed, regions released.
struct Env {
    mm: &'static KernelMm,
    spaces: Vec<Arc<Space>>,
    regions: Vec<Arc<SharedRegion>>,
}

impl Env {
    fn new() -> Result<Env, TestError> {
        Ok(Env {
            mm: need_mm()?,
            spaces: Vec::new(),
            regions: Vec::new(),
        })
    }

    fn space(&mut self) -> Result<Arc<Space>, TestError> {
        let space = self
            .mm
            .new_space()
            .map_err(|e| fail(format!("new_space: {e}")))?;
        self.spaces.push(space.clone());
        Ok(space)
    }

    fn region(&mut self, len: u64) -> Result<Arc<SharedRegion>, TestError> {
        let region = SharedRegion::new(len).map_err(|e| fail(format!("region: {e}")))?;
        self.regions.push(region.clone());
        Ok(region)
    }

    fn map(&self, space: &Space, start: u64, len: u64, flags: VmaFlags) -> TestResult {
        self.mm
            .map_anon(space, start, len, flags)
            .map_err(|e| fail(format!("map_anon({start:#x}, {len:#x}): {e}")))
    }

    fn populate(&self, space: &Space, start: u64, len: u64) -> TestResult {
        self.mm
            .populate(space, start, len)
            .map_err(|e| fail(format!("populate({start:#x}, {len:#x}): {e}")))
    }

    /// Destroy every space and release every region, checking each step (the test must
    /// have dropped its own handles on the regions).
    fn teardown(mut self) -> TestResult {
        deactivate();
        for space in core::mem::take(&mut self.spaces) {
            let r = self.mm.destroy_space(&space);
            check_eq!(r, Ok(()));
        }
        for region in core::mem::take(&mut self.regions) {
            let r = self.mm.release_region(&region);
            check!(r.is_ok(), "release_region: {r:?}");
        }
        Ok(())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        deactivate();
        for space in &self.spaces {
            // A failed test may leave a space loaded on another CPU: it is then kept.
            let _ = self.mm.destroy_space(space);
        }
        for region in &self.regions {
            let _ = self.mm.release_region(region);
        }
    }
}

/// Both audits: the reverse map against every page table, then the allocator.
fn audits(mm: &KernelMm) -> TestResult {
    let rmap = mm.rmap_audit();
    check!(rmap.is_ok(), "reverse-map audit: {rmap:?}");
    let buddy = frames::drain_and_audit();
    check!(buddy.is_ok(), "allocator audit: {buddy:?}");
    Ok(())
}

// ---------------------------------------------------------------- demand-zero faults

/// Touch `va` (reads zero, then a write reads back) and check the leaf that maps it.
fn touch(space: &Space, va: u64, want: PageSize) -> Result<(), String> {
    if read(va) != Some(0) {
        return Err(format!("{va:#x}: a fresh page must read zero"));
    }
    let v = value(va, 1, 0);
    if !write(va, v) || read(va) != Some(v) {
        return Err(format!("{va:#x}: write did not read back"));
    }
    let t = space
        .translate(va)
        .ok_or_else(|| format!("{va:#x}: not mapped after the fault"))?;
    if t.size != want {
        return Err(format!("{va:#x}: {:?} leaf, expected {want:?}", t.size));
    }
    if !t.leaf_base_pa.is_aligned(want.bytes())
        || t.pa.as_u64() - t.leaf_base_pa.as_u64() != va % want.bytes()
    {
        return Err(format!("{va:#x}: leaf at {:?} misaligned", t.leaf_base_pa));
    }
    Ok(())
}

/// On the running CPU: 4 KiB, 2 MiB, alignment fallback and on-request faults.
fn small_faults(mm: &'static KernelMm) -> Result<(), String> {
    let space = mm.new_space().map_err(|e| format!("new_space: {e}"))?;
    let result = (|| {
        let map = |start, len, huge| {
            mm.map_anon(&space, start, len, private(huge))
                .map_err(|e| format!("map_anon {start:#x}: {e}"))
        };
        map(BASE, 16 * K4, HugePolicy::Never)?;
        map(BASE + G1, 2 * M2, HugePolicy::Always)?;
        map(BASE + 2 * G1 + M2 / 2, 2 * M2, HugePolicy::Always)?;
        map(BASE + 3 * G1, 2 * M2, HugePolicy::OnRequest)?;
        activate(&space).map_err(|e| format!("activate: {e}"))?;
        let cases = [
            (BASE + 5 * K4 + 8, PageSize::Size4K),
            (BASE + G1 + 0x1_2340, PageSize::Size2M),
            (BASE + G1 + M2 + 8, PageSize::Size2M),
            // The 2 MiB around these is not inside the VMA: 4 KiB.
            (BASE + 2 * G1 + M2 / 2 + 8, PageSize::Size4K),
            (BASE + 2 * G1 + 2 * M2 + 16, PageSize::Size4K),
            (BASE + 2 * G1 + M2 + 0x8_0000, PageSize::Size2M),
            // On request: 4 KiB at fault time.
            (BASE + 3 * G1 + 8, PageSize::Size4K),
        ];
        for (va, want) in cases {
            touch(&space, va, want)?;
        }
        // The rest of a huge leaf is zero too, and mapped already.
        for va in [BASE + G1, BASE + G1 + M2 - 8, BASE + 2 * G1 + M2] {
            if read(va) != Some(0) {
                return Err(format!("{va:#x}: not zero"));
            }
        }
        // On request, populate maps the huge page.
        mm.populate(&space, BASE + 3 * G1 + M2, M2)
            .map_err(|e| format!("populate: {e}"))?;
        let t = space.translate(BASE + 3 * G1 + M2 + 8);
        if t.map(|t| t.size) != Some(PageSize::Size2M) {
            return Err(format!("populate on request mapped {t:?}"));
        }
        Ok(())
    })();
    deactivate();
    let destroyed = mm.destroy_space(&space);
    result?;
    destroyed.map_err(|e| format!("destroy_space: {e}"))
}

/// On the running CPU: a fault in a 1 GiB VMA maps 1 GiB when the allocator has such a
/// block, else 2 MiB. Returns the size mapped.
fn gib_fault(mm: &'static KernelMm) -> Result<PageSize, String> {
    let space = mm.new_space().map_err(|e| format!("new_space: {e}"))?;
    let result = (|| {
        mm.map_anon(&space, BASE + 4 * G1, G1, private(HugePolicy::Always))
            .map_err(|e| format!("map_anon: {e}"))?;
        let want = if free_1g_blocks() > 0 {
            PageSize::Size1G
        } else {
            PageSize::Size2M
        };
        activate(&space).map_err(|e| format!("activate: {e}"))?;
        touch(&space, BASE + 4 * G1 + G1 / 2 + 8, want)?;
        for va in [BASE + 4 * G1, BASE + 5 * G1 - 8] {
            if read(va) != Some(0) {
                return Err(format!("{va:#x}: not zero"));
            }
        }
        Ok(want)
    })();
    deactivate();
    let destroyed = mm.destroy_space(&space);
    let size = result?;
    destroyed.map_err(|e| format!("destroy_space: {e}"))?;
    Ok(size)
}

fn demand_zero_faults(_: &TestContext) -> TestResult {
    let mm = need_mm()?;
    let before = available();
    let started = timer::now_ns();
    // Every CPU at once, each in its own address space.
    let results = smp::broadcast(move |_| small_faults(mm));
    check!(results.is_ok(), "broadcast: {results:?}");
    for (cpu, r) in results.unwrap_or_default() {
        check!(r.is_ok(), "CPU {cpu}: {}", r.err().unwrap_or_default());
    }
    // 1 GiB on each CPU in turn (each zeroes a whole gigabyte).
    let mut sizes = Vec::new();
    for cpu in percpu::online().iter() {
        let r = smp::run_on(cpu, move || gib_fault(mm));
        check!(r.is_ok(), "run_on {cpu}: {:?}", r.err());
        let Ok(pending) = r else { return Ok(()) };
        let size = pending.wait();
        check!(
            size.is_ok(),
            "CPU {cpu}: {}",
            size.err().unwrap_or_default()
        );
        sizes.push(size.unwrap_or(PageSize::Size4K));
    }
    // With every 1 GiB block taken, the same fault falls back to 2 MiB.
    let mut taken = Vec::new();
    while let Ok(pfn) = frames::alloc(ORDER_1G, MigrateType::Movable) {
        taken.push(pfn);
    }
    let fallback = gib_fault(mm);
    for &pfn in &taken {
        check_eq!(frames::free(pfn.addr(), ORDER_1G), Ok(()));
    }
    check_eq!(fallback, Ok(PageSize::Size2M));
    sprint!(
        "(1 GiB faults per CPU: {sizes:?}; {} 1 GiB blocks taken away -> {:?}; {} ms) ",
        taken.len(),
        PageSize::Size2M,
        (timer::now_ns() - started) / 1_000_000
    );
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}

// ---------------------------------------------------------------- shared regions

fn shared_region(_: &TestContext) -> TestResult {
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let a = env.space()?;
    let b = env.space()?;
    let region = env.region(M2 + 2 * K4)?;
    let (va_a, va_b, va_b2) = (BASE + G1, BASE + 8 * G1, BASE + 9 * G1 + K4);
    env.map(&a, va_a, M2 + 2 * K4, shared(&region, HugePolicy::Always))?;
    env.map(&b, va_b, M2 + 2 * K4, shared(&region, HugePolicy::Always))?;
    // A second window in B at an address where no 2 MiB leaf fits.
    env.map(&b, va_b2, M2, shared(&region, HugePolicy::Always))?;
    let offsets = [0, 8, M2 / 2, M2 - 8, M2, M2 + K4 + 16];
    // Written through A on one CPU...
    let other = percpu::online().iter().find(|&c| c != 0).unwrap_or(0);
    let writer = {
        let a = a.clone();
        smp::run_on(other, move || {
            let ok =
                activate(&a).is_ok() && offsets.iter().all(|&o| write(va_a + o, value(o, 7, 0)));
            deactivate();
            ok
        })
    };
    check!(writer.is_ok());
    let Ok(writer) = writer else { return Ok(()) };
    check!(writer.wait(), "writes through A failed");
    // ...read through B on this one.
    check_eq!(activate(&b), Ok(()));
    for &o in &offsets {
        check_eq!(read(va_b + o), Some(value(o, 7, 0)));
    }
    check_eq!(read(va_b2 + M2 / 2), Some(value(M2 / 2, 7, 0)));
    let (ta, tb, tb2) = (
        a.translate(va_a + 8),
        b.translate(va_b + 8),
        b.translate(va_b2 + M2 / 2),
    );
    check!(
        ta.is_some() && ta.map(|t| t.pa) == tb.map(|t| t.pa),
        "{ta:?} vs {tb:?}"
    );
    check_eq!(ta.map(|t| t.size), Some(PageSize::Size2M));
    check_eq!(tb2.map(|t| t.size), Some(PageSize::Size4K));
    check_eq!(
        tb2.map(|t| t.pa.as_u64()),
        ta.map(|t| t.leaf_base_pa.as_u64() + M2 / 2)
    );
    let huge = block_at(&a, va_a).map(|(h, _)| h);
    let small = block_at(&a, va_a + M2).map(|(h, _)| h);
    check!(huge.is_some() && small.is_some());
    let (huge, small) = (huge.unwrap_or(Pfn(0)), small.unwrap_or(Pfn(0)));
    let spaces_of = |head| {
        let mut v: Vec<(u64, u64, PageSize)> = mm
            .rmap_of(head)
            .iter()
            .map(|e| (e.space.0, e.va.as_u64(), e.size))
            .collect();
        v.sort_unstable();
        v
    };
    let mut want = vec![
        (a.id().0, va_a, PageSize::Size2M),
        (b.id().0, va_b, PageSize::Size2M),
        (b.id().0, va_b2 + M2 / 2, PageSize::Size4K),
    ];
    want.sort_unstable();
    check_eq!(spaces_of(huge), want);
    check_eq!(spaces_of(small).len(), 2);
    check!(mm.rmap_audit().is_ok());
    // Unmapped from A: B keeps the frame and its contents.
    check_eq!(mm.unmap(&a, va_a, M2 + 2 * K4), Ok(()));
    check_eq!(
        spaces_of(huge),
        vec![
            (b.id().0, va_b, PageSize::Size2M),
            (b.id().0, va_b2 + M2 / 2, PageSize::Size4K)
        ]
    );
    check_eq!(read(va_b + M2 - 8), Some(value(M2 - 8, 7, 0)));
    check_eq!(block_at(&b, va_b).map(|(h, _)| h), Some(huge));
    sprint!("(one 2 MiB frame mapped 2M in A and B and 4K in B) ");
    drop(region);
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}

// ---------------------------------------------------------------- writers vs migrator

/// Words of a slot, spread over its 4 KiB page.
const SLOT_WORDS: u64 = 8;

/// One writer's eight words in a 4 KiB page: word j at `page + j * 512 + index * 8`.
struct Slot {
    page: u64,
    index: u64,
    id: u64,
    generation: u64,
}

impl Slot {
    fn word(&self, j: u64) -> u64 {
        self.page + j * 512 + self.index * 8
    }

    fn expected(&self, j: u64) -> u64 {
        if self.generation == 0 {
            0
        } else {
            value(self.id, self.generation, j)
        }
    }
}

/// A writer: checks that each of its slots holds what it last wrote, then writes the next
/// generation; it is the only writer of its slots.
struct Writer {
    space: Arc<Space>,
    slots: Vec<Slot>,
    updates: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Writer {
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    /// Check every slot against its generation; with `update`, write the next one.
    fn pass(&mut self, update: bool) {
        for i in 0..self.slots.len() {
            for j in 0..SLOT_WORDS {
                let (va, want) = (self.slots[i].word(j), self.slots[i].expected(j));
                let got = read(va);
                if got != Some(want) {
                    self.error(format!(
                        "{va:#x} (generation {}): {got:x?}, expected {want:#x}",
                        self.slots[i].generation
                    ));
                }
            }
            if !update {
                continue;
            }
            self.slots[i].generation += 1;
            for j in 0..SLOT_WORDS {
                let (va, v) = (self.slots[i].word(j), self.slots[i].expected(j));
                if !write(va, v) {
                    self.error(format!("{va:#x}: write faulted"));
                }
            }
            self.updates += 1;
        }
    }
}

/// A block to migrate, found through one of its mappings.
struct Block {
    space: Arc<Space>,
    va: u64,
}

/// Everything the concurrency test set up.
struct Workload {
    writers: Vec<Writer>,
    blocks: [Vec<Block>; 3],
}

/// Build the address spaces, regions, VMAs and slots of the concurrency test for
/// `writers` writers (1-based indices; odd ones write through A, even ones through B).
fn workload(env: &mut Env, writers: u64, with_1g: bool) -> Result<Workload, TestError> {
    let a = env.space()?;
    let b = env.space()?;
    let space_of = |k: u64| if k % 2 == 1 { a.clone() } else { b.clone() };
    let mut blocks: [Vec<Block>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut next_id = 0;
    let mut slots: Vec<Vec<Slot>> = (0..=writers).map(|_| Vec::new()).collect();
    let mut add_slots = |k: u64, page_base: u64, subpages: &[u64]| {
        for &s in subpages {
            next_id += 1;
            slots[k as usize].push(Slot {
                page: page_base + s * K4,
                index: k,
                id: next_id,
                generation: 0,
            });
        }
    };
    const PRIVATE_4K: u64 = 48;
    const SHARED_4K: u64 = 32;
    const SUB_2M: [u64; 4] = [0, 1, 256, 511];
    const SUB_1G: [u64; 7] = [0, 1, 65_536, 131_071, 131_072, 200_000, 262_143];
    // Private memory of each writer: 4 KiB pages and two 2 MiB pages.
    for k in 1..=writers {
        let s = space_of(k);
        let (p4, p2) = (BASE + k * (64 << 20), BASE + G1 + k * (64 << 20));
        env.map(&s, p4, PRIVATE_4K * K4, private(HugePolicy::Never))?;
        env.map(&s, p2, 2 * M2, private(HugePolicy::Always))?;
        env.populate(&s, p4, PRIVATE_4K * K4)?;
        env.populate(&s, p2, 2 * M2)?;
        for i in 0..PRIVATE_4K {
            add_slots(k, p4 + i * K4, &[0]);
            blocks[0].push(Block {
                space: s.clone(),
                va: p4 + i * K4,
            });
        }
        for i in 0..2 {
            add_slots(k, p2 + i * M2, &SUB_2M);
            blocks[1].push(Block {
                space: s.clone(),
                va: p2 + i * M2,
            });
        }
    }
    // Shared regions, mapped in both spaces: 4 KiB pages, 2 MiB pages, one 1 GiB page.
    let mut shared_sets = vec![(SHARED_4K * K4, BASE + 4 * G1, HugePolicy::Never, 0usize)];
    shared_sets.push((2 * M2, BASE + 5 * G1, HugePolicy::Always, 1));
    if with_1g {
        shared_sets.push((G1, BASE + 8 * G1, HugePolicy::Always, 2));
    }
    for (len, at, huge, kind) in shared_sets {
        let region = env.region(len)?;
        // B maps it 8 GiB (1 GiB aligned) higher than A.
        let (in_a, in_b) = (at, at + 8 * G1);
        env.map(&a, in_a, len, shared(&region, huge))?;
        env.map(&b, in_b, len, shared(&region, huge))?;
        env.populate(&a, in_a, len)?;
        env.populate(&b, in_b, len)?;
        let size = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G][kind];
        for i in 0..len / size.bytes() {
            let off = i * size.bytes();
            let t = a.translate(in_a + off);
            check!(
                t.map(|t| t.size) == Some(size)
                    && t.map(|t| t.pa) == b.translate(in_b + off).map(|t| t.pa),
                "shared {size:?} page {i}: {t:?}"
            );
            blocks[kind].push(Block {
                space: a.clone(),
                va: in_a + off,
            });
            for k in 1..=writers {
                let base = if k % 2 == 1 { in_a } else { in_b } + off;
                match kind {
                    0 => add_slots(k, base, &[0]),
                    1 => add_slots(k, base, &SUB_2M),
                    _ => add_slots(k, base, &SUB_1G),
                }
            }
        }
    }
    for k in 1..=writers {
        let t = space_of(k).translate(BASE + G1 + k * (64 << 20));
        check_eq!(t.map(|t| t.size), Some(PageSize::Size2M));
    }
    let writers = slots
        .into_iter()
        .enumerate()
        .skip(1)
        .map(|(k, slots)| Writer {
            space: space_of(k as u64),
            slots,
            updates: 0,
            errors: 0,
            first_error: None,
        })
        .collect();
    Ok(Workload { writers, blocks })
}

/// Migration counts of the concurrency test.
#[derive(Default)]
struct Migrated {
    done: [u64; 3],
    failed: u64,
    first_failure: Option<String>,
}

impl Migrated {
    fn total(&self) -> u64 {
        self.done.iter().sum()
    }

    /// Migrate the blocks `picks` of `blocks` (one batch) anywhere.
    fn batch(&mut self, mm: &KernelMm, kind: usize, blocks: &[Block], picks: &[usize]) {
        let mut requests = Vec::with_capacity(picks.len());
        for &i in picks {
            match block_at(&blocks[i].space, blocks[i].va) {
                Some((head, _)) => requests.push((head, Destination::Any)),
                None => {
                    self.failed += 1;
                    self.first_failure
                        .get_or_insert(format!("{:#x} is not mapped", blocks[i].va));
                }
            }
        }
        for (r, &(src, _)) in mm.migrate_batch(&requests).iter().zip(&requests) {
            match r {
                Ok(_) => self.done[kind] += 1,
                Err(e) => {
                    self.failed += 1;
                    self.first_failure
                        .get_or_insert(format!("migrating {src:?}: {e}"));
                }
            }
        }
    }
}

/// Total migrations the test performs at least.
const MIGRATIONS: u64 = 100_000;
/// 4 KiB pages per batch.
const BATCH_4K: usize = 64;
/// One 2 MiB migration every this many batches.
const EVERY_2M: u64 = 3;
/// One 1 GiB migration every this many batches.
const EVERY_1G: u64 = 300;

fn writers_vs_migrator(ctx: &TestContext) -> TestResult {
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let online = percpu::online();
    let me = percpu::cpu_index();
    let writer_cpus: Vec<u32> = online.iter().filter(|&c| c != me).take(3).collect();
    // One CPU: two writers (one per space) take turns with the migrator on it.
    let n_writers = if writer_cpus.is_empty() {
        2
    } else {
        writer_cpus.len() as u64
    };
    // A 1 GiB page and a free 1 GiB block to move it to.
    let with_1g = free_1g_blocks() >= 2;
    let Workload {
        mut writers,
        blocks,
    } = workload(&mut env, n_writers, with_1g)?;
    let stop = Arc::new(AtomicBool::new(false));
    let waits_before = super::migration_waits();
    let mut pending = Vec::new();
    if !writer_cpus.is_empty() {
        for (w, &cpu) in writers.drain(..).zip(&writer_cpus) {
            let stop = stop.clone();
            let p = smp::run_on(cpu, move || {
                let mut w = w;
                if let Err(e) = activate(&w.space) {
                    w.error(format!("activate: {e}"));
                    return w;
                }
                while !stop.load(Ordering::Acquire) {
                    w.pass(true);
                }
                deactivate();
                w
            });
            check!(p.is_ok(), "starting a writer on CPU {cpu}: {:?}", p.err());
            pending.extend(p);
        }
    }
    let started = timer::now_ns();
    let mut rng = Rng::new(ctx.seed);
    let mut migrated = Migrated::default();
    let mut order: Vec<usize> = (0..blocks[0].len()).collect();
    let mut round = 0u64;
    while migrated.total() < MIGRATIONS {
        for i in 0..BATCH_4K.min(order.len()) {
            let j = i + rng.below((order.len() - i) as u64) as usize;
            order.swap(i, j);
        }
        let picks = &order[..BATCH_4K.min(order.len())];
        migrated.batch(mm, 0, &blocks[0], picks);
        round += 1;
        if round.is_multiple_of(EVERY_2M) {
            let i = (round / EVERY_2M) as usize % blocks[1].len();
            migrated.batch(mm, 1, &blocks[1], &[i]);
        }
        if round.is_multiple_of(EVERY_1G) && !blocks[2].is_empty() {
            migrated.batch(mm, 2, &blocks[2], &[0]);
        }
        if pending.is_empty() {
            for w in writers.iter_mut() {
                if activate(&w.space).is_ok() {
                    w.pass(true);
                }
            }
            deactivate();
        }
        if migrated.failed > 0 {
            break;
        }
    }
    let elapsed_ms = (timer::now_ns() - started) / 1_000_000;
    stop.store(true, Ordering::Release);
    writers.extend(pending.into_iter().map(|p| p.wait()));
    let waits = super::migration_waits() - waits_before;
    // Every slot holds its writer's last generation.
    for w in writers.iter_mut() {
        if activate(&w.space).is_ok() {
            w.pass(false);
        }
    }
    deactivate();
    let updates: u64 = writers.iter().map(|w| w.updates).sum();
    let errors: u64 = writers.iter().map(|w| w.errors).sum();
    sprint!(
        "({} writers {}, {updates} updates, {waits} faults waited for a migration; migrated 4K {} + 2M {} + 1G {} = {} in {elapsed_ms} ms{}; {errors} checksum errors) ",
        writers.len(),
        if writer_cpus.is_empty() {
            String::from("taking turns with the migrator on 1 CPU")
        } else {
            format!("on CPUs {writer_cpus:?}")
        },
        migrated.done[0],
        migrated.done[1],
        migrated.done[2],
        migrated.total(),
        if with_1g { "" } else { ", no 1 GiB page: fewer than 2 free 1 GiB blocks" },
    );
    let first_error = writers.iter().find_map(|w| w.first_error.clone());
    check!(
        errors == 0,
        "{errors} checksum errors, first: {first_error:?}"
    );
    check!(
        migrated.failed == 0,
        "{} migrations failed, first: {:?}",
        migrated.failed,
        migrated.first_failure
    );
    check!(migrated.total() >= MIGRATIONS);
    check!(migrated.done[1] > 0 && (!with_1g || migrated.done[2] > 0));
    check!(
        writers.iter().all(|w| w.updates > 0),
        "a writer never wrote"
    );
    if !writer_cpus.is_empty() {
        check!(waits > 0, "no writer ever ran into a migration");
    }
    check!(mm.rmap_audit().is_ok(), "{:?}", mm.rmap_audit());
    drop(writers);
    drop(blocks);
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}

// ---------------------------------------------------------------- fault injection

/// Fill the probe words of the block at `va` (of `size`) with values of `seed`.
fn fill(va: u64, size: PageSize, seed: u64) -> bool {
    probes(size).all(|o| write(va + o, value(seed, o, 3)))
}

fn intact(va: u64, size: PageSize, seed: u64) -> bool {
    probes(size).all(|o| read(va + o) == Some(value(seed, o, 3)))
}

fn probes(size: PageSize) -> impl Iterator<Item = u64> {
    let b = size.bytes();
    [0, 8, K4 - 8, b / 2, b - 8]
        .into_iter()
        .filter(move |&o| o < b)
}

fn injected_failures(_: &TestContext) -> TestResult {
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let frames_src = super::frames();
    let s = env.space()?;
    let (small, huge) = (BASE, BASE + G1);
    env.map(&s, small, 8 * K4, private(HugePolicy::Never))?;
    env.map(&s, huge, M2, private(HugePolicy::Always))?;
    env.populate(&s, small, 8 * K4)?;
    env.populate(&s, huge, M2)?;
    check_eq!(activate(&s), Ok(()));
    // Pages 0-7 (4 KiB) and 8 (2 MiB), each with its own contents.
    let pages: Vec<(u64, PageSize)> = (0..8)
        .map(|i| (small + i * K4, PageSize::Size4K))
        .chain([(huge, PageSize::Size2M)])
        .collect();
    for (i, &(va, size)) in pages.iter().enumerate() {
        check!(fill(va, size, i as u64));
    }
    let heads: Vec<Pfn> = pages
        .iter()
        .filter_map(|&(va, _)| block_at(&s, va).map(|(h, _)| h))
        .collect();
    check_eq!(heads.len(), pages.len());
    // Batch: 4K 0-3, the 2 MiB page, 4K 4-7. Destinations are allocated in that order
    // (a refused page allocates nothing): the 2 MiB page's allocation (the fifth) fails,
    // and page 6 is pinned, as by a device, just before the sixth allocation (page 4's).
    let order = [0usize, 1, 2, 3, 8, 4, 5, 6, 7];
    let requests: Vec<(Pfn, Destination)> = order
        .iter()
        .map(|&i| (heads[i], Destination::Any))
        .collect();
    frames_src.injector.fail_nth(4);
    frames_src.injector.pin_at_nth(5, &s, pages[6].0);
    let free_before = available();
    let results = mm.migrate_batch(&requests);
    let injected_pin = frames_src.injector.injected_pin();
    frames_src.injector.disarm();
    check_eq!(injected_pin, Some(Ok(heads[6])));
    let mut moved = Vec::new();
    for (k, (&i, r)) in order.iter().zip(&results).enumerate() {
        let want_err = match i {
            8 => Some(MigrateError::OutOfMemory),
            6 => Some(MigrateError::Pinned),
            _ => None,
        };
        match want_err {
            Some(e) => check_eq!(*r, Err(e)),
            None => {
                check!(r.is_ok(), "request {k} (page {i}): {r:?}");
                moved.push(i);
            }
        }
        let now = block_at(&s, pages[i].0).map(|(h, t)| (h, t.size));
        match r {
            Ok(dst) => check_eq!(now, Some((*dst, pages[i].1))),
            Err(_) => {
                check_eq!(now, Some((heads[i], pages[i].1)));
                check!(mm.migration_entry_at(&s, pages[i].0).is_none());
            }
        }
        check!(
            intact(pages[i].0, pages[i].1, i as u64),
            "page {i} lost data"
        );
    }
    check_eq!(available(), free_before);
    check!(mm.rmap_audit().is_ok(), "{:?}", mm.rmap_audit());
    // Once unpinned and with memory back, both move.
    check_eq!(
        mm.migrate_one(heads[6], Destination::Any).err(),
        Some(MigrateError::Pinned)
    );
    check_eq!(mm.unpin(heads[6]), Ok(()));
    check_eq!(mm.unpin(heads[6]), Err(PinError::NotPinned));
    for i in [6, 8] {
        check!(mm.migrate_one(heads[i], Destination::Any).is_ok());
        check!(intact(pages[i].0, pages[i].1, i as u64));
    }
    // A destination that is not free fails one page of a batch, not the others.
    let now: Vec<Pfn> = (0..3)
        .filter_map(|i| block_at(&s, pages[i].0).map(|(h, _)| h))
        .collect();
    check_eq!(now.len(), 3);
    let results = mm.migrate_batch(&[
        (now[0], Destination::Any),
        (now[1], Destination::Frame(now[2])),
        (now[2], Destination::Any),
    ]);
    check!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    check_eq!(results[1], Err(MigrateError::DestinationNotFree));
    check_eq!(block_at(&s, pages[1].0).map(|(h, _)| h), Some(now[1]));
    for (i, &(va, size)) in pages.iter().enumerate() {
        check!(intact(va, size, i as u64), "page {i} lost data");
    }
    sprint!("(moved {moved:?}; 2M destination allocation failed; page 6 pinned mid-batch) ");
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}

// ---------------------------------------------------------------- bad input

/// What a refused operation must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    vmas: Vec<(u64, u64, bool)>,
    leaves: Vec<(VirtAddr, Translation)>,
    free: usize,
    rmap: usize,
}

fn snapshot(space: &Space, heads: &[Pfn]) -> Snapshot {
    let mm = super::mm();
    Snapshot {
        vmas: space
            .vmas()
            .iter()
            .map(|v| (v.start, v.end, v.flags.writable))
            .collect(),
        leaves: space.leaves(),
        free: available(),
        rmap: heads
            .iter()
            .map(|&h| mm.map_or(0, |m| m.rmap_of(h).len()))
            .sum(),
    }
}

fn bad_input(_: &TestContext) -> TestResult {
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let s = env.space()?;
    let (small, huge, ro) = (BASE, BASE + G1, BASE + 2 * G1);
    env.map(&s, small, 4 * K4, private(HugePolicy::Never))?;
    env.map(&s, huge, M2, private(HugePolicy::Always))?;
    env.map(&s, ro, K4, VmaFlags::private(HugePolicy::Never, false))?;
    env.populate(&s, small, 4 * K4)?;
    env.populate(&s, huge, M2)?;
    check_eq!(activate(&s), Ok(()));
    check!(fill(small, PageSize::Size4K, 1) && fill(huge, PageSize::Size2M, 2));
    let hs = block_at(&s, small).map(|(h, _)| h);
    let hh = block_at(&s, huge).map(|(h, _)| h);
    check!(hs.is_some() && hh.is_some());
    let (hs, hh) = (hs.unwrap_or(Pfn(0)), hh.unwrap_or(Pfn(0)));
    let heads = [hs, hh];
    let region = env.region(M2)?;
    let hole = 0x0000_8000_0000_0000u64;
    let kernel = 0xFFFF_8000_0000_0000u64;
    let top = 0x0000_7FFF_FFFF_F000u64;
    let unmapped = BASE + 3 * G1;
    let nowhere = NodeId(1 + numa::nodes().last().map_or(0, |n| n.0));
    let used_frame = block_at(&s, small + K4).map_or(Pfn(0), |(h, _)| h);
    let free_frame = frames::alloc(0, MigrateType::Movable);
    check!(free_frame.is_ok());
    let free_frame = free_frame.unwrap_or(Pfn(0));
    check_eq!(frames::free(free_frame.addr(), 0), Ok(()));
    let root_frame = Pfn::containing(s.root());
    let table_len = super::frames().frame_table().len() as u64;
    let flags = || private(HugePolicy::Always);
    let window = |offset| VmaFlags {
        shared: Some(SharedBacking {
            region: region.clone(),
            offset,
        }),
        ..private(HugePolicy::Never)
    };
    let mut snap = snapshot(&s, &heads);
    let mut n = 0;
    macro_rules! refused {
        ($op:expr, $want:expr) => {{
            let got = $op;
            let want = $want;
            let same = got == want;
            check!(same, "{}: {:?}, expected {:?}", stringify!($op), got, want);
            check_eq!(snapshot(&s, &heads), snap);
            n += 1;
        }};
    }
    // Address-space operations.
    refused!(
        mm.map_anon(&s, unmapped, 0, flags()),
        Err(SpaceError::ZeroLength)
    );
    refused!(
        mm.map_anon(&s, unmapped + 8, K4, flags()),
        Err(SpaceError::Unaligned)
    );
    refused!(
        mm.map_anon(&s, unmapped, K4 + 8, flags()),
        Err(SpaceError::Unaligned)
    );
    refused!(
        mm.map_anon(&s, hole, K4, flags()),
        Err(SpaceError::NonCanonical)
    );
    refused!(
        mm.map_anon(&s, top, 2 * K4, flags()),
        Err(SpaceError::NonCanonical)
    );
    refused!(
        mm.map_anon(&s, kernel, K4, flags()),
        Err(SpaceError::KernelHalf)
    );
    refused!(
        mm.map_anon(&s, small + K4, 4 * K4, flags()),
        Err(SpaceError::Overlap)
    );
    refused!(
        mm.map_anon(&s, unmapped, K4, window(8)),
        Err(SpaceError::Unaligned)
    );
    refused!(
        mm.map_anon(&s, unmapped, 2 * M2, window(0)),
        Err(SpaceError::RegionBounds)
    );
    refused!(
        mm.map_anon(
            &s,
            unmapped,
            K4,
            VmaFlags {
                node: Some(nowhere),
                ..flags()
            }
        ),
        Err(SpaceError::NoSuchNode)
    );
    refused!(mm.unmap(&s, small + 8, K4), Err(SpaceError::Unaligned));
    refused!(mm.unmap(&s, hole, K4), Err(SpaceError::NonCanonical));
    refused!(mm.unmap(&s, kernel, K4), Err(SpaceError::KernelHalf));
    refused!(mm.unmap(&s, unmapped, K4), Ok(()));
    refused!(
        mm.protect(&s, unmapped, K4, false),
        Err(SpaceError::NotMapped)
    );
    refused!(
        mm.protect(&s, small, 8 * K4, false),
        Err(SpaceError::NotMapped)
    );
    refused!(
        mm.protect(&s, kernel, K4, false),
        Err(SpaceError::KernelHalf)
    );
    refused!(mm.populate(&s, unmapped, K4), Err(SpaceError::NotMapped));
    refused!(mm.destroy_space(&s), Err(SpaceError::InUse));
    // Moving a range to a node.
    let node0 = numa::nodes().first().copied().unwrap_or(NodeId(0));
    refused!(
        mm.move_range_to_node(&s, small + 8, K4, node0).err(),
        Some(SpaceError::Unaligned)
    );
    refused!(
        mm.move_range_to_node(&s, hole, K4, node0).err(),
        Some(SpaceError::NonCanonical)
    );
    refused!(
        mm.move_range_to_node(&s, kernel, K4, node0).err(),
        Some(SpaceError::KernelHalf)
    );
    refused!(
        mm.move_range_to_node(&s, unmapped, K4, node0).err(),
        Some(SpaceError::NotMapped)
    );
    refused!(
        mm.move_range_to_node(&s, small, 8 * K4, node0).err(),
        Some(SpaceError::NotMapped)
    );
    refused!(
        mm.move_range_to_node(&s, small, K4, nowhere).err(),
        Some(SpaceError::NoSuchNode)
    );
    // Migration.
    let migrate = |src, dst| mm.migrate_one(src, dst);
    refused!(
        migrate(Pfn(table_len + 7), Destination::Any),
        Err(MigrateError::OutOfRange)
    );
    refused!(
        migrate(hh.add(1), Destination::Any),
        Err(MigrateError::NotHead)
    );
    refused!(
        migrate(free_frame, Destination::Any),
        Err(MigrateError::NotInUse)
    );
    refused!(
        migrate(root_frame, Destination::Any),
        Err(MigrateError::NotInUse)
    );
    refused!(
        migrate(hs, Destination::Frame(hs)),
        Err(MigrateError::DestinationOverlaps)
    );
    refused!(
        migrate(hh, Destination::Frame(hh)),
        Err(MigrateError::DestinationOverlaps)
    );
    refused!(
        migrate(hh, Destination::Frame(hh.add(1))),
        Err(MigrateError::DestinationUnaligned)
    );
    refused!(
        migrate(hs, Destination::Frame(Pfn(table_len))),
        Err(MigrateError::DestinationOutOfRange)
    );
    refused!(
        migrate(hs, Destination::Frame(used_frame)),
        Err(MigrateError::DestinationNotFree)
    );
    refused!(
        migrate(hs, Destination::Node(nowhere)),
        Err(MigrateError::NoSuchNode)
    );
    refused!(mm.pin(&s, unmapped), Err(PinError::NotMapped));
    refused!(mm.unpin(free_frame), Err(PinError::NotInUse));
    refused!(mm.unpin(hs), Err(PinError::NotPinned));
    refused!(mm.unpin(Pfn(table_len + 7)), Err(PinError::OutOfRange));
    // Faults the address space cannot resolve: no VMA, a write to read-only memory.
    refused!(read(unmapped), None);
    refused!(write(unmapped, 1), false);
    let leaves = s.leaves().len();
    check_eq!(read(ro), Some(0));
    check_eq!(s.leaves().len(), leaves + 1);
    snap = snapshot(&s, &heads);
    refused!(write(ro, 1), false);
    refused!(read(ro), Some(0));
    check!(intact(small, PageSize::Size4K, 1) && intact(huge, PageSize::Size2M, 2));
    sprint!("({n} refusals, each typed and without effect) ");
    drop(region);
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}

// ---------------------------------------------------------------- NUMA

fn numa_move(_: &TestContext) -> TestResult {
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let s = env.space()?;
    let nodes = numa::nodes();
    let first = nodes.first().copied().unwrap_or(NodeId(0));
    if nodes.len() < 2 {
        env.map(&s, BASE, 2 * M2, private(HugePolicy::Always))?;
        env.populate(&s, BASE, 2 * M2)?;
        let nowhere = NodeId(first.0 + 1);
        let snap = snapshot(&s, &[]);
        let r = mm.move_range_to_node(&s, BASE, 2 * M2, nowhere);
        check_eq!(r.err(), Some(SpaceError::NoSuchNode));
        check_eq!(snapshot(&s, &[]), snap);
        let head = block_at(&s, BASE).map(|(h, _)| h);
        check!(head.is_some());
        let r = mm.migrate_one(head.unwrap_or(Pfn(0)), Destination::Node(nowhere));
        check_eq!(r, Err(MigrateError::NoSuchNode));
        check_eq!(snapshot(&s, &[]), snap);
        sprint!("(single node: move not exercised; NoSuchNode checked) ");
        env.teardown()?;
        audits(mm)?;
        check_eq!(available(), before);
        return Ok(());
    }
    // 1 GiB + two 2 MiB pages (preferably on the first node), then four 4 KiB pages.
    let (start, len) = (BASE + G1, G1 + 2 * M2 + 4 * K4);
    let huge_len = G1 + 2 * M2;
    let flags = VmaFlags {
        node: Some(first),
        ..private(HugePolicy::Always)
    };
    env.map(&s, start, huge_len, flags)?;
    env.map(&s, start + huge_len, 4 * K4, private(HugePolicy::Never))?;
    let blocks = |s: &Space| -> Vec<(u64, PageSize, Option<NodeId>)> {
        s.leaves()
            .iter()
            .map(|(va, t)| (va.as_u64(), t.size, numa::node_of(Pfn::containing(t.pa))))
            .collect()
    };
    env.populate(&s, start, len)?;
    check_eq!(activate(&s), Ok(()));
    let pages: Vec<(u64, PageSize, u64)> = s
        .leaves()
        .iter()
        .enumerate()
        .map(|(i, (va, t))| (va.as_u64(), t.size, i as u64))
        .collect();
    for &(va, size, seed) in &pages {
        check!(fill(va, size, seed));
    }
    let initial = blocks(&s);
    check!(
        initial.iter().any(|b| b.1 == PageSize::Size1G),
        "no 1 GiB page: {} free 1 GiB blocks",
        free_1g_blocks()
    );
    sprint!("(before: ");
    report(&initial);
    // Move everything to the node the 1 GiB page is not on, then back.
    let home = initial[0].2.unwrap_or(first);
    let away = nodes.iter().copied().find(|&n| n != home).unwrap_or(home);
    for target in [away, home] {
        let r = mm.move_range_to_node(&s, start, len, target);
        check!(r.is_ok(), "move to node {}: {r:?}", target.0);
        let Ok(report_) = r else { return Ok(()) };
        check!(report_.failed.is_empty(), "{:?}", report_.failed);
        let now = blocks(&s);
        check_eq!(now.len(), initial.len());
        for (b, i) in now.iter().zip(&initial) {
            check!(
                b.0 == i.0 && b.1 == i.1,
                "leaf {:#x} was {:?}, now {:?}",
                i.0,
                i.1,
                b.1
            );
            check_eq!(b.2, Some(target));
        }
        for &(va, size, seed) in &pages {
            check!(intact(va, size, seed), "{va:#x} lost data");
        }
        sprint!(
            " | moved {} blocks to node {}: ",
            report_.moved.len(),
            target.0
        );
        report(&now);
    }
    sprint!(") ");
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}

/// Print the leaves by node and the per-node usage, on the test's line.
fn report(leaves: &[(u64, PageSize, Option<NodeId>)]) {
    let usage = numa::usage();
    for (k, node) in numa::nodes().into_iter().enumerate() {
        let count = |size| {
            leaves
                .iter()
                .filter(|l| l.2 == Some(node) && l.1 == size)
                .count()
        };
        let used = usage
            .iter()
            .find(|u| u.node == node)
            .map_or(0, |u| (u.used * K4) >> 20);
        sprint!(
            "{}node {}: {}x1G {}x2M {}x4K, {used} MiB used",
            if k == 0 { "" } else { "; " },
            node.0,
            count(PageSize::Size1G),
            count(PageSize::Size2M),
            count(PageSize::Size4K)
        );
    }
}
