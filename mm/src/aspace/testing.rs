//! Host-side stand-ins for the kernel's collaborators (feature `std`): a sparse physical
//! memory that backs only the frames that were touched (so 1 GiB pages cost only what is
//! written), a [`FrameSource`] with fault injection, a [`TlbShootdown`] that records its
//! calls, [`with_env`], which builds a whole machine around an [`Mm`], and the check that
//! every freed frame was shot down first wherever a CPU may have cached it
//! ([`cached_leaves`], [`uncovered_free`]).

use super::inject::Injector;
use super::{AddressSpace, FrameSource, Mm, TlbShootdown};
use crate::backend::phys::PhysMem;
use crate::backend::shootdown::{FlushBatch, ShootdownError};
use crate::backend::source::BuddyFrames;
use crate::base::addr::{PageSize, Pfn, PAGE_SIZE};
use crate::base::cpuset::CpuSet;
use crate::frame::buddy::{AllocError, BuddyAllocator, FreeError, MigrateType};
use crate::frame::meta::FrameTable;
use crate::frame::node::{NodeId, NodeMap, NodeRange};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::boxed::Box;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::vec::Vec;
use x86_64::{PhysAddr, VirtAddr};

/// One 4 KiB frame of [`SparseMem`].
type Frame = [AtomicU64; 512];

/// Physical memory of `frames` frames of which only those touched are backed (zeroed on
/// first touch). Zeroing or copying into an untouched frame from an untouched frame
/// leaves it untouched.
pub struct SparseMem {
    frames: u64,
    backed: Mutex<HashMap<u64, Box<Frame>>>,
}

impl SparseMem {
    /// `frames` frames of zeroes.
    pub fn new(frames: u64) -> SparseMem {
        SparseMem {
            frames,
            backed: Mutex::new(HashMap::new()),
        }
    }

    /// Number of frames backed by host memory.
    pub fn backed_frames(&self) -> usize {
        self.backed.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn frame_ptr(&self, pfn: u64) -> *mut u8 {
        assert!(
            pfn < self.frames,
            "sparse memory access out of range: {pfn:#x}"
        );
        let mut backed = self.backed.lock().unwrap_or_else(|e| e.into_inner());
        let frame = backed
            .entry(pfn)
            .or_insert_with(|| Box::new([const { AtomicU64::new(0) }; 512]));
        frame.as_ptr() as *mut u8
    }
}

// SAFETY: every frame is a boxed array that is never freed or moved while the memory
// lives (the map only grows and boxes keep their address), 8-byte aligned, and distinct
// frames are distinct boxes. Out-of-range addresses panic rather than alias.
unsafe impl PhysMem for SparseMem {
    fn ptr(&self, pa: PhysAddr) -> *mut u8 {
        let offset = (pa.as_u64() % PAGE_SIZE) as usize;
        self.frame_ptr(pa.as_u64() / PAGE_SIZE).wrapping_add(offset)
    }

    fn zero_frame(&self, pa: PhysAddr) {
        let backed = self.backed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(frame) = backed.get(&(pa.as_u64() / PAGE_SIZE)) {
            frame.iter().for_each(|w| w.store(0, Ordering::Relaxed));
        }
    }

    fn copy_frame(&self, dst: PhysAddr, src: PhysAddr) {
        let (s, d) = (src.as_u64() / PAGE_SIZE, dst.as_u64() / PAGE_SIZE);
        let source_backed = self
            .backed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&s);
        if !source_backed {
            self.zero_frame(dst);
            return;
        }
        let (sp, dp) = (
            self.frame_ptr(s) as *const Frame,
            self.frame_ptr(d) as *const Frame,
        );
        // SAFETY: both pointers come from live boxes of this memory (see the impl's
        // safety comment); atomics make the shared access sound.
        let (sf, df) = unsafe { (&*sp, &*dp) };
        for (a, b) in df.iter().zip(sf) {
            a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// Something the test machine saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A shootdown.
    Shootdown {
        /// The CPUs it targeted.
        cpus: CpuSet,
        /// The ranges.
        ranges: Vec<(VirtAddr, PageSize)>,
        /// Whether it was a full flush.
        full: bool,
        /// Whether page-table frames are freed after it.
        tables: bool,
    },
    /// A block was freed.
    Free {
        /// Its head.
        pfn: Pfn,
        /// Its order.
        order: u8,
    },
}

/// The ordered record of shootdowns and frees.
#[derive(Default)]
pub struct EventLog {
    events: Mutex<Vec<Event>>,
}

impl EventLog {
    fn push(&self, e: Event) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e);
    }

    /// Take every event recorded so far.
    pub fn take(&self) -> Vec<Event> {
        core::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A [`TlbShootdown`] that records its calls in an [`EventLog`].
pub struct TestTlb<'a> {
    log: &'a EventLog,
    calls: AtomicUsize,
}

impl<'a> TestTlb<'a> {
    /// Recording into `log`.
    pub fn new(log: &'a EventLog) -> TestTlb<'a> {
        TestTlb {
            log,
            calls: AtomicUsize::new(0),
        }
    }

    /// Number of shootdowns so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Acquire)
    }
}

impl TlbShootdown for TestTlb<'_> {
    fn shootdown(&self, cpus: CpuSet, batch: &FlushBatch) -> Result<(), ShootdownError> {
        self.calls.fetch_add(1, Ordering::AcqRel);
        self.log.push(Event::Shootdown {
            cpus,
            ranges: batch
                .pages()
                .iter()
                .map(|&(va, size)| (VirtAddr::new_truncate(va), size))
                .collect(),
            full: batch.is_full(),
            tables: batch.frees_tables(),
        });
        Ok(())
    }
}

/// A translation some CPUs may have cached: a present leaf of an address space and the
/// CPUs that had the space loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedLeaf {
    /// The CPUs that had the space loaded.
    pub cpus: CpuSet,
    /// The leaf's first address.
    pub va: VirtAddr,
    /// The leaf's size.
    pub size: PageSize,
    /// The first frame the leaf maps.
    pub pa: PhysAddr,
}

/// Every present leaf of `spaces` with the CPUs that have each space loaded now: what
/// their TLBs may hold, to check an operation's frees against with [`uncovered_free`].
pub fn cached_leaves<M: PhysMem>(spaces: &[&AddressSpace<'_, M>]) -> Vec<CachedLeaf> {
    let mut cached = Vec::new();
    for space in spaces {
        let cpus = space.cpus().load();
        if cpus.is_empty() {
            continue;
        }
        cached.extend(space.leaves().into_iter().map(|(va, t)| CachedLeaf {
            cpus,
            va,
            size: t.size,
            pa: t.leaf_base_pa,
        }));
    }
    cached
}

/// A frame freed while a CPU may still hold a translation to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UncoveredFree {
    /// The freed block's head and order.
    pub freed: (Pfn, u8),
    /// The leaf that mapped (part of) it.
    pub leaf: CachedLeaf,
    /// The CPU no earlier shootdown flushed that leaf on.
    pub cpu: u32,
}

/// The first free in `events` of a block that one of `cached` mapped, on a CPU that no
/// earlier shootdown in `events` flushed that leaf on; `None` when every free is
/// covered. A shootdown covers a leaf on a CPU when the CPU is in its set and it is a
/// full flush or invalidates an address inside the leaf (one `invlpg` per range, at the
/// range's first address).
pub fn uncovered_free(cached: &[CachedLeaf], events: &[Event]) -> Option<UncoveredFree> {
    let covers = |event: &Event, leaf: &CachedLeaf, cpu: u32| match event {
        Event::Shootdown {
            cpus, ranges, full, ..
        } => {
            let end = leaf.va.as_u64() + leaf.size.bytes();
            cpus.contains(cpu)
                && (*full
                    || ranges
                        .iter()
                        .any(|(va, _)| (leaf.va.as_u64()..end).contains(&va.as_u64())))
        }
        Event::Free { .. } => false,
    };
    for (i, event) in events.iter().enumerate() {
        let Event::Free { pfn, order } = *event else {
            continue;
        };
        let start = pfn.addr().as_u64();
        let end = start + (PAGE_SIZE << order);
        for leaf in cached {
            let leaf_start = leaf.pa.as_u64();
            if leaf_start >= end || leaf_start + leaf.size.bytes() <= start {
                continue;
            }
            if let Some(cpu) = leaf
                .cpus
                .iter()
                .find(|&cpu| !events[..i].iter().any(|e| covers(e, leaf, cpu)))
            {
                return Some(UncoveredFree {
                    freed: (pfn, order),
                    leaf: leaf.clone(),
                    cpu,
                });
            }
        }
    }
    None
}

/// A [`FrameSource`] over [`BuddyFrames`] with fault injection ([`Injector`]), whose
/// frees are recorded in the event log.
pub struct TestFrames<'a, M: PhysMem> {
    inner: BuddyFrames<'a>,
    log: &'a EventLog,
    /// The faults to inject.
    pub injector: Injector<'a, M>,
    mm: OnceLock<&'a Mm<'a, M>>,
}

impl<'a, M: PhysMem> TestFrames<'a, M> {
    /// Frames from `inner`, frees recorded in `log`.
    pub fn new(inner: BuddyFrames<'a>, log: &'a EventLog) -> TestFrames<'a, M> {
        TestFrames {
            inner,
            log,
            injector: Injector::new(),
            mm: OnceLock::new(),
        }
    }

    /// The allocator underneath.
    pub fn buddy(&self) -> &BuddyFrames<'a> {
        &self.inner
    }

    /// Attach the `Mm` that injected pins go through.
    pub fn attach(&self, mm: &'a Mm<'a, M>) {
        // A second attach keeps the first `Mm`: there is only one per machine.
        let _ = self.mm.set(mm);
    }

    fn inject(&self, order: u8) -> bool {
        self.injector.on_alloc(order, self.mm.get().copied())
    }
}

impl<M: PhysMem> FrameSource for TestFrames<'_, M> {
    fn alloc(&self, order: u8, mt: MigrateType, node: Option<NodeId>) -> Result<Pfn, AllocError> {
        if self.inject(order) {
            return Err(AllocError::OutOfMemory);
        }
        self.inner.alloc(order, mt, node)
    }

    fn alloc_at(&self, pfn: Pfn, order: u8, mt: MigrateType) -> Result<Pfn, AllocError> {
        if self.inject(order) {
            return Err(AllocError::OutOfMemory);
        }
        self.inner.alloc_at(pfn, order, mt)
    }

    fn alloc_at_batch(
        &self,
        blocks: &[(Pfn, u8)],
        mt: MigrateType,
        out: &mut Vec<Result<Pfn, AllocError>>,
    ) {
        self.injector
            .alloc_at_batch(self.mm.get().copied(), blocks, out, |asked, served| {
                self.inner.alloc_at_batch(asked, mt, served)
            });
    }

    fn free(&self, pfn: Pfn, order: u8) -> Result<(), FreeError> {
        self.log.push(Event::Free { pfn, order });
        self.inner.free(pfn, order)
    }

    fn free_batch(&self, blocks: &[(Pfn, u8)]) -> u64 {
        for &(pfn, order) in blocks {
            self.log.push(Event::Free { pfn, order });
        }
        self.inner.free_batch(blocks)
    }

    fn frame_table(&self) -> FrameTable<'_> {
        self.inner.frame_table()
    }

    fn node_range(&self, pfn: Pfn) -> Option<NodeRange> {
        self.inner.node_range(pfn)
    }

    fn node_exists(&self, node: NodeId) -> bool {
        self.inner.node_exists(node)
    }

    fn node_ranges(&self, node: NodeId) -> Vec<(Pfn, Pfn)> {
        self.inner.node_ranges(node)
    }

    fn allocations(&self) -> u64 {
        self.inner.allocations()
    }
}

/// A test machine: memory, allocator, shootdown recorder and the `Mm` over them.
pub struct Env<'a, M: PhysMem> {
    /// Physical memory.
    pub mem: &'a M,
    /// The frame source.
    pub frames: &'a TestFrames<'a, M>,
    /// The shootdown recorder.
    pub tlb: &'a TestTlb<'a>,
    /// Shootdowns and frees, in order.
    pub log: &'a EventLog,
    /// The memory manager.
    pub mm: &'a Mm<'a, M>,
}

impl<M: PhysMem> Env<'_, M> {
    /// Run the reverse-map audit and the buddy allocator's audit; panics (it is a test
    /// helper) with the first inconsistency.
    pub fn audit(&self) {
        if let Err(e) = self.mm.rmap_audit() {
            panic!("rmap audit: {e:?}");
        }
        if let Err(e) = self.frames.buddy().lock().audit() {
            panic!("buddy audit: {e:?}");
        }
    }

    /// Free frames in the allocator.
    pub fn free_frames(&self) -> usize {
        self.frames.buddy().lock().free_frames()
    }
}

/// Build a machine of `frames` frames over `mem` (PFN 0 stays reserved), with `nodes`
/// as `(first PFN, end PFN, node)` (empty: one node 0 over everything), and run `f`.
pub fn with_env<M: PhysMem, R>(
    mem: M,
    frames: u64,
    nodes: &[(u64, u64, u32)],
    f: impl FnOnce(&Env<'_, M>) -> R,
) -> R {
    let records = FrameTable::boxed_records(frames as usize);
    let table = FrameTable::new(&records).expect("frame table too large");
    let mut buddy = BuddyAllocator::new(table);
    buddy
        .add_free_range(Pfn(1), Pfn(frames))
        .expect("fresh frame table");
    let node_map = if nodes.is_empty() {
        NodeMap::single(Pfn(0), Pfn(frames))
    } else {
        let mut map = NodeMap::new();
        for &(s, e, n) in nodes {
            map.add(Pfn(s), Pfn(e), NodeId(n)).expect("node ranges");
        }
        map
    };
    let log = EventLog::default();
    let test_frames = TestFrames::new(BuddyFrames::new(buddy, node_map), &log);
    let tlb = TestTlb::new(&log);
    let mm = Mm::new(&mem, &test_frames, &tlb, None);
    test_frames.attach(&mm);
    let env = Env {
        mem: &mem,
        frames: &test_frames,
        tlb: &tlb,
        log: &log,
        mm: &mm,
    };
    f(&env)
}

/// Write the 8-byte word `value` at user address `va` of `space` through its current
/// translation (as the MMU would), or `false` if `va` is not mapped.
pub fn write_user<M: PhysMem>(
    mem: &M,
    space: &super::AddressSpace<'_, M>,
    va: u64,
    value: u64,
) -> bool {
    match space.translate(va) {
        Some(t) => {
            mem.word(t.pa).store(value, Ordering::Release);
            true
        }
        None => false,
    }
}

/// The 8-byte word at user address `va` of `space`, if mapped.
pub fn read_user<M: PhysMem>(mem: &M, space: &super::AddressSpace<'_, M>, va: u64) -> Option<u64> {
    space
        .translate(va)
        .map(|t| mem.word(t.pa).load(Ordering::Acquire))
}

/// An emulated TLB shootdown over emulated CPUs ([`EmuCpu`]): each CPU's "TLB" lives for
/// one access (a translation is looked up, used and dropped), so a shootdown is complete
/// once every targeted CPU has finished the access it was in when the shootdown started.
#[derive(Default)]
pub struct EmuTlb {
    /// Per CPU: odd while inside an access.
    seq: [AtomicU64; 4],
    calls: AtomicUsize,
}

impl EmuTlb {
    /// Shootdowns so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

impl TlbShootdown for EmuTlb {
    fn shootdown(&self, cpus: CpuSet, _: &FlushBatch) -> Result<(), ShootdownError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        core::sync::atomic::fence(Ordering::SeqCst);
        for cpu in cpus.iter().map(|c| c as usize).filter(|&c| c < 4) {
            let s = self.seq[cpu].load(Ordering::SeqCst);
            if s % 2 == 1 {
                while self.seq[cpu].load(Ordering::SeqCst) == s {
                    std::thread::yield_now();
                }
            }
        }
        Ok(())
    }
}

/// An emulated CPU (0 to 3): it reaches memory through the page tables of an address
/// space, as the MMU would, and its accesses are what [`EmuTlb`] waits for.
pub struct EmuCpu<'x, 'a, M: PhysMem> {
    mm: &'x Mm<'a, M>,
    mem: &'x M,
    tlb: &'x EmuTlb,
    cpu: usize,
}

impl<'x, 'a, M: PhysMem> EmuCpu<'x, 'a, M> {
    /// CPU `cpu` (below 4) of the machine `mm`, `mem`, `tlb`.
    pub fn new(mm: &'x Mm<'a, M>, mem: &'x M, tlb: &'x EmuTlb, cpu: usize) -> Self {
        assert!(cpu < 4, "EmuTlb tracks CPUs 0 to 3");
        EmuCpu { mm, mem, tlb, cpu }
    }

    /// The memory manager this CPU faults into.
    pub fn mm(&self) -> &'x Mm<'a, M> {
        self.mm
    }

    /// One access to the word at `va`: walk the tables like the MMU; on a fault, let the
    /// `Mm` resolve it (waiting out migrations) and retry. Panics (a test helper) on a
    /// fault the `Mm` refuses.
    pub fn access<R>(
        &self,
        space: &AddressSpace<'a, M>,
        va: u64,
        write: bool,
        f: impl Fn(&AtomicU64) -> R,
    ) -> R {
        let seq = &self.tlb.seq[self.cpu];
        loop {
            seq.fetch_add(1, Ordering::SeqCst);
            core::sync::atomic::fence(Ordering::SeqCst);
            if let Some((word, size)) =
                crate::paging::testing::leaf_word(self.mem, space.root(), va)
            {
                let e = crate::paging::Entry::from_raw(word.load(Ordering::Acquire));
                if e.is_present() {
                    let pa = e.leaf_addr(size) + (va & (size.bytes() - 1));
                    let r = f(self.mem.word(pa));
                    seq.fetch_add(1, Ordering::SeqCst);
                    return r;
                }
            }
            seq.fetch_add(1, Ordering::SeqCst);
            match self.mm.handle_fault(space, va, write) {
                Ok(crate::ops::fault::FaultOutcome::WaitMigration(w)) => {
                    self.mm.wait_migration_with(&w, std::thread::yield_now)
                }
                Ok(_) => {}
                Err(e) => panic!("fault at {va:#x}: {e:?}"),
            }
        }
    }
}
