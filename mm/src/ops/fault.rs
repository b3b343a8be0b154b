//! Demand-zero page faults, pre-faulting ([`Mm::populate`]) and waiting for a migration.
//!
//! A fault on a user address inside a VMA whose leaf slot is empty allocates a zeroed
//! frame and maps it: 1 GiB if the VMA's policy allows huge pages, the 1 GiB-aligned
//! range around the address lies inside the VMA (and inside the shared region, at an
//! aligned offset, for a shared VMA), the page-table slot at that level is empty and the
//! allocator has an order-18 block; else 2 MiB on the same terms; else 4 KiB. A shared
//! VMA first looks for the region's frame and maps it, as large as alignment allows.
//!
//! The address-space lock is held to decide and to map, not while the frame is
//! allocated and zeroed (zeroing 1 GiB takes long): the fault plans under the lock,
//! drops it, prepares the frame, retakes the lock and maps only if nothing changed
//! meanwhile (same VMA generation, slot still empty, region frame still absent);
//! otherwise it frees the frame and starts over.
//!
//! A fault on a migration entry returns [`FaultOutcome::WaitMigration`]: the kernel
//! drops whatever it holds, waits with [`Mm::wait_migration`] (which spins on an epoch
//! counter, not on a lock) and returns from the fault so the access is retried.

use crate::aspace::vmstat::Event;
use crate::aspace::{user_leaf_flags, AddressSpace, Flush, Mm, SpaceError, Tables};
use crate::backend::phys::PhysMem;
use crate::base::addr::{PageSize, Pfn, PAGE_SIZE};
use crate::frame::buddy::MigrateType;
use crate::frame::meta::FrameFlags;
use crate::frame::node::NodeId;
use crate::mapping::region;
use crate::mapping::region::{RegionFrame, SharedRegion};
use crate::mapping::rmap::RmapEntry;
use crate::mapping::vma::{check_user_addr, check_user_range, HugePolicy, Mobility, Vma, VmaError};
use crate::paging::MapError;
use crate::paging::MigrationEntry;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::Ordering;
use x86_64::VirtAddr;

/// What a fault did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// A leaf of `size` starting at `va` now maps the address.
    Mapped {
        /// First address of the new leaf.
        va: VirtAddr,
        /// Its size.
        size: PageSize,
    },
    /// The address was already mapped (another CPU faulted first, or a stale TLB
    /// entry): retry the access.
    Spurious,
    /// The page is being migrated: wait with [`Mm::wait_migration`], holding no lock,
    /// then retry the access.
    WaitMigration(MigrationWait),
}

/// What a faulting CPU waits for: the completion of the migration it ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationWait {
    epoch: u64,
    frame: Pfn,
}

impl MigrationWait {
    /// The block under migration.
    pub fn frame(&self) -> Pfn {
        self.frame
    }
}

/// Why a fault could not be resolved (the kernel delivers it to the faulting program).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultError {
    /// The address is not canonical.
    NonCanonical,
    /// The address is in the kernel half.
    KernelHalf,
    /// No VMA contains the address.
    NoVma,
    /// A write to a read-only VMA.
    ReadOnly,
    /// No frame or page-table frame could be allocated.
    OutOfMemory,
    /// The address space was destroyed.
    SpaceDestroyed,
    /// The address space belongs to another [`Mm`].
    ForeignSpace,
    /// The slot holds a non-present entry that is not a migration entry.
    BadEntry,
    /// Another address-space error, kept as it was.
    Space(SpaceError),
}

impl fmt::Display for FaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultError::NonCanonical => "non-canonical address",
            FaultError::KernelHalf => "kernel address",
            FaultError::NoVma => "no VMA at the address",
            FaultError::ReadOnly => "write to a read-only VMA",
            FaultError::OutOfMemory => "out of memory",
            FaultError::SpaceDestroyed => "address space destroyed",
            FaultError::ForeignSpace => "address space of another Mm",
            FaultError::BadEntry => "corrupt page-table entry",
            FaultError::Space(e) => return write!(f, "{e}"),
        })
    }
}

impl core::error::Error for FaultError {}

impl From<SpaceError> for FaultError {
    fn from(e: SpaceError) -> FaultError {
        match e {
            SpaceError::KernelHalf => FaultError::KernelHalf,
            SpaceError::ForeignSpace => FaultError::ForeignSpace,
            SpaceError::SpaceDestroyed => FaultError::SpaceDestroyed,
            SpaceError::OutOfMemory => FaultError::OutOfMemory,
            SpaceError::NonCanonical => FaultError::NonCanonical,
            other => FaultError::Space(other),
        }
    }
}

impl From<VmaError> for FaultError {
    fn from(e: VmaError) -> FaultError {
        FaultError::from(SpaceError::from(e))
    }
}

impl From<FaultError> for SpaceError {
    fn from(e: FaultError) -> SpaceError {
        match e {
            FaultError::NonCanonical => SpaceError::NonCanonical,
            FaultError::KernelHalf => SpaceError::KernelHalf,
            FaultError::NoVma => SpaceError::NotMapped,
            FaultError::ReadOnly => SpaceError::ReadOnly,
            FaultError::OutOfMemory => SpaceError::OutOfMemory,
            FaultError::SpaceDestroyed => SpaceError::SpaceDestroyed,
            FaultError::ForeignSpace => SpaceError::ForeignSpace,
            FaultError::BadEntry => SpaceError::BadEntry,
            FaultError::Space(e) => e,
        }
    }
}

/// A frame to allocate, decided under the lock.
struct Plan {
    generation: u64,
    /// Candidate sizes, largest first; the last is 4 KiB.
    sizes: Vec<PageSize>,
    mt: MigrateType,
    pinned: bool,
    node: Option<NodeId>,
    writable: bool,
    /// The region and the offset of the faulting page in it, for a shared VMA.
    shared: Option<(Arc<SharedRegion>, u64)>,
    /// For an anchored VMA: per candidate size, the block its leaf belongs at.
    targets: Vec<(PageSize, Pfn)>,
}

enum Step {
    Done(FaultOutcome),
    Allocate(Plan),
}

/// The first address of the leaf of `size` containing `va`.
fn base(va: u64, size: PageSize) -> u64 {
    va & !(size.bytes() - 1)
}

/// Whether the leaf of `size` around `va` lies inside `vma` (and, if shared, inside the
/// region at an offset aligned to `size`).
fn fits(vma: &Vma, va: u64, size: PageSize) -> bool {
    let b = base(va, size);
    let inside = b >= vma.start && b + size.bytes() <= vma.end;
    inside
        && vma.flags.shared.as_ref().is_none_or(|s| {
            let off = s.offset + (b - vma.start);
            off.is_multiple_of(size.bytes()) && off + size.bytes() <= s.region.len()
        })
}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Resolve a page fault of `space` at `va` (`write`: the access was a write).
    pub fn handle_fault(
        &self,
        space: &AddressSpace<'m, M>,
        va: u64,
        write: bool,
    ) -> Result<FaultOutcome, FaultError> {
        self.fault(space, va, write, false)
    }

    /// Fault in every page of `[start, start + len)` (covered by VMAs) now, with huge
    /// pages where the VMA's policy is `Always` or `OnRequest`.
    pub fn populate(
        &self,
        space: &AddressSpace<'m, M>,
        start: u64,
        len: u64,
    ) -> Result<(), SpaceError> {
        self.check_space(space)?;
        let (start, end) = check_user_range(start, len)?;
        {
            let st = space.state.lock();
            if st.dead {
                return Err(SpaceError::SpaceDestroyed);
            }
            if !st.vmas.covers(start, end) {
                return Err(SpaceError::NotMapped);
            }
        }
        let mut va = start;
        while va < end {
            match self.fault(space, va, false, true) {
                Ok(FaultOutcome::Mapped { va: b, size }) => va = b.as_u64() + size.bytes(),
                Ok(FaultOutcome::Spurious) => {
                    if let Some(t) = space.translate(va) {
                        va = base(va, t.size) + t.size.bytes();
                    }
                }
                Ok(FaultOutcome::WaitMigration(w)) => self.wait_migration(&w),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Whether the migration `wait` names has completed (or another one has, which is
    /// reason enough to retry the access).
    pub fn migration_done(&self, wait: &MigrationWait) -> bool {
        self.epoch.load(Ordering::Acquire) != wait.epoch
            || self.meta(wait.frame).is_none_or(|m| !m.is_claimed())
    }

    /// Spin until the migration `wait` names has completed. Call it holding no lock, with
    /// interrupts enabled (the migrating CPU shoots this CPU's TLB down meanwhile), or use
    /// [`wait_migration_with`](Self::wait_migration_with) to serve shootdowns while waiting.
    pub fn wait_migration(&self, wait: &MigrationWait) {
        self.wait_migration_with(wait, core::hint::spin_loop);
    }

    /// [`wait_migration`](Self::wait_migration), calling `relax` between checks.
    pub fn wait_migration_with(&self, wait: &MigrationWait, mut relax: impl FnMut()) {
        while !self.migration_done(wait) {
            relax();
        }
    }

    /// The fault path; `on_request` lets `OnRequest` VMAs use huge pages.
    pub(crate) fn fault(
        &self,
        space: &AddressSpace<'m, M>,
        va: u64,
        write: bool,
        on_request: bool,
    ) -> Result<FaultOutcome, FaultError> {
        self.check_space(space)?;
        check_user_addr(va)?;
        loop {
            let epoch = self.epoch.load(Ordering::Acquire);
            let plan = match self.plan_fault(space, va, write, on_request, epoch)? {
                Step::Done(outcome) => return Ok(outcome),
                Step::Allocate(plan) => plan,
            };
            let (head, size) = self.alloc_fault_frame(&plan)?;
            for i in 0..1u64 << size.order() {
                self.mem.zero_frame(head.add(i).addr());
            }
            if let Some(outcome) = self.commit_fault(space, va, &plan, head, size)? {
                return Ok(outcome);
            }
        }
    }

    /// Look at the fault under the lock: resolve it (spurious, migration, a shared frame
    /// that exists) or say what to allocate.
    fn plan_fault(
        &self,
        space: &AddressSpace<'m, M>,
        va: u64,
        write: bool,
        on_request: bool,
        epoch: u64,
    ) -> Result<Step, FaultError> {
        let mut st = space.state.lock();
        if st.dead {
            return Err(FaultError::SpaceDestroyed);
        }
        let vma = st.vmas.find(va).ok_or(FaultError::NoVma)?.clone();
        if write && !vma.flags.writable {
            return Err(FaultError::ReadOnly);
        }
        let (level, entry) = st.pt.raw_entry(va).ok_or(FaultError::NonCanonical)?;
        if entry.is_present() {
            return Ok(Step::Done(FaultOutcome::Spurious));
        }
        if !entry.is_unused() {
            let mig = MigrationEntry::decode(entry, level).ok_or(FaultError::BadEntry)?;
            let frame = self.head_of(mig.source_pfn()).unwrap_or(mig.source_pfn());
            return Ok(Step::Done(FaultOutcome::WaitMigration(MigrationWait {
                epoch,
                frame,
            })));
        }
        let max = PageSize::at_level(level.min(3))
            .unwrap_or(PageSize::Size4K)
            .min(self.max_leaf());
        let huge = match vma.flags.huge {
            HugePolicy::Never => false,
            HugePolicy::Always => true,
            HugePolicy::OnRequest => on_request,
        };
        let allowed = |size: PageSize| {
            size <= max && (size == PageSize::Size4K || huge) && fits(&vma, va, size)
        };
        if let Some(backing) = &vma.flags.shared {
            let region = backing.region.clone();
            let offset = backing.offset + (base(va, PageSize::Size4K) - vma.start);
            let frames = region.frames.lock();
            let page = offset / PAGE_SIZE;
            if let Some((key, rf)) = region::covering(&frames, page) {
                // The largest leaf around `va` that maps an aligned piece of the frame.
                let leaf = |s: PageSize| {
                    let pages = s.bytes() / PAGE_SIZE;
                    let leaf_va = base(va, s);
                    let first = page.checked_sub((va - leaf_va) / PAGE_SIZE)?;
                    (s <= rf.size
                        && allowed(s)
                        && first >= key
                        && first + pages <= key + rf.pages()
                        && (first - key) % pages == 0)
                        .then_some((s, leaf_va, first))
                };
                let (size, leaf_va, first_page) = [PageSize::Size1G, PageSize::Size2M]
                    .into_iter()
                    .find_map(leaf)
                    .unwrap_or((PageSize::Size4K, base(va, PageSize::Size4K), page));
                let pfn = rf.head.add(first_page - key);
                let meta = self.meta(rf.head).ok_or(FaultError::BadEntry)?;
                {
                    let mut rmap = self.rmap.lock();
                    if meta.is_claimed() {
                        return Ok(Step::Done(FaultOutcome::WaitMigration(MigrationWait {
                            epoch,
                            frame: rf.head,
                        })));
                    }
                    Self::add_mapping(
                        &mut rmap,
                        meta,
                        rf.head,
                        RmapEntry {
                            space: space.id(),
                            va: VirtAddr::new_truncate(leaf_va),
                            size,
                            offset: first_page - key,
                        },
                    )
                    .map_err(|e| FaultError::Space(SpaceError::Count(e)))?;
                }
                drop(frames);
                let mut flush = Flush::new();
                let mapped = st.pt.map(
                    leaf_va,
                    pfn.addr(),
                    size,
                    user_leaf_flags(vma.flags.writable),
                    &mut Tables::new(self.frames),
                    &mut flush,
                );
                if let Err(e) = mapped {
                    // The block may have been fused or split meanwhile (a promotion of
                    // the region from another space): its head is read again.
                    let head = {
                        let mut rmap = self.rmap.lock();
                        let head = self.head_of(pfn).unwrap_or(rf.head);
                        rmap.remove(head, space.id(), leaf_va);
                        if let Some(m) = self.meta(head) {
                            self.count_result(m.remove_mapping(rmap.counts()));
                        }
                        head
                    };
                    drop(st);
                    flush.complete(self, space);
                    self.put_refs(&[head]);
                    return match e {
                        MapError::OutOfTables => Err(FaultError::OutOfMemory),
                        _ => Ok(Step::Done(FaultOutcome::Spurious)),
                    };
                }
                drop(st);
                flush.complete(self, space);
                return Ok(Step::Done(FaultOutcome::Mapped {
                    va: VirtAddr::new_truncate(leaf_va),
                    size,
                }));
            }
            let free_in_region = |s: PageSize| {
                let first = page - (va - base(va, s)) / PAGE_SIZE;
                !region::overlaps(&frames, first, s.bytes() / PAGE_SIZE)
            };
            let sizes = [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K]
                .into_iter()
                .filter(|&s| s == PageSize::Size4K || (allowed(s) && free_in_region(s)))
                .collect();
            drop(frames);
            let shared = Some((region, offset));
            return Ok(Step::Allocate(self.plan(
                &vma,
                va,
                st.generation,
                sizes,
                shared,
            )));
        }
        let sizes = [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K]
            .into_iter()
            .filter(|&s| s == PageSize::Size4K || allowed(s))
            .collect();
        Ok(Step::Allocate(self.plan(
            &vma,
            va,
            st.generation,
            sizes,
            None,
        )))
    }

    fn plan(
        &self,
        vma: &Vma,
        va: u64,
        generation: u64,
        sizes: Vec<PageSize>,
        shared: Option<(Arc<SharedRegion>, u64)>,
    ) -> Plan {
        let pinned = vma.flags.mobility == Mobility::Pinned;
        // A page faulted into an anchored VMA goes to its target frame when that is free
        // (a block of a size the anchor keeps aligned).
        let targets = vma.anchor.as_ref().map_or_else(Vec::new, |anchor| {
            sizes
                .iter()
                .filter_map(|&size| {
                    let t = anchor.target(base(va, size))?;
                    let last = anchor.target(base(va, size) + size.bytes() - PAGE_SIZE)?;
                    (t.is_aligned(size.order()) && last == t.add(size.bytes() / PAGE_SIZE - 1))
                        .then_some((size, t))
                })
                .collect()
        });
        Plan {
            generation,
            sizes,
            mt: if pinned {
                MigrateType::Unmovable
            } else {
                MigrateType::Movable
            },
            pinned,
            node: vma.flags.node,
            writable: vma.flags.writable,
            shared,
            targets,
        }
    }

    /// The largest candidate block the allocator has (preferred node first).
    fn alloc_fault_frame(&self, plan: &Plan) -> Result<(Pfn, PageSize), FaultError> {
        let got = self.alloc_fault_block(plan)?;
        let wanted = plan.sizes.first().copied().unwrap_or(PageSize::Size4K);
        match got.1 {
            PageSize::Size2M => self.vmstat.count(Event::FaultHuge2m, 1),
            PageSize::Size1G => self.vmstat.count(Event::FaultHuge1g, 1),
            PageSize::Size4K => {}
        }
        if got.1 < wanted {
            self.vmstat.count(Event::FaultFallback, 1);
        }
        Ok(got)
    }

    fn alloc_fault_block(&self, plan: &Plan) -> Result<(Pfn, PageSize), FaultError> {
        for &size in &plan.sizes {
            let order = size.order();
            let target = plan.targets.iter().find(|(s, _)| *s == size);
            if let Some(pfn) =
                target.and_then(|&(_, t)| self.frames.alloc_at(t, order, plan.mt).ok())
            {
                return Ok((pfn, size));
            }
            let on_node = plan
                .node
                .and_then(|n| self.frames.alloc(order, plan.mt, Some(n)).ok());
            if let Some(pfn) = on_node.or_else(|| self.frames.alloc(order, plan.mt, None).ok()) {
                return Ok((pfn, size));
            }
        }
        Err(FaultError::OutOfMemory)
    }

    /// Map the prepared block `head` of `size` for the fault at `va` if nothing changed
    /// since the plan; `None` (block freed) if something did and the fault must restart.
    fn commit_fault(
        &self,
        space: &AddressSpace<'m, M>,
        va: u64,
        plan: &Plan,
        head: Pfn,
        size: PageSize,
    ) -> Result<Option<FaultOutcome>, FaultError> {
        let discard = |result| {
            let freed = self.frames.free(head, size.order());
            debug_assert!(freed.is_ok(), "freeing an unused fault frame: {freed:?}");
            result
        };
        let meta = match self.meta(head) {
            Some(meta) => meta,
            None => return discard(Err(FaultError::OutOfMemory)),
        };
        let mut st = space.state.lock();
        if st.dead {
            drop(st);
            return discard(Err(FaultError::SpaceDestroyed));
        }
        if st.generation != plan.generation {
            drop(st);
            return discard(Ok(None));
        }
        let leaf_va = base(va, size);
        let region = plan.shared.as_ref().map(|(r, off)| {
            let first = off / PAGE_SIZE - (va - leaf_va) / PAGE_SIZE;
            (r, first, r.frames.lock())
        });
        if let Some((_, first, frames)) = &region {
            if region::overlaps(frames, *first, size.bytes() / PAGE_SIZE) {
                drop(region);
                drop(st);
                return discard(Ok(None));
            }
        }
        if plan.pinned {
            meta.insert_flags(FrameFlags::PINNED);
        }
        let mut flush = Flush::new();
        let mapped = st.pt.map(
            leaf_va,
            head.addr(),
            size,
            user_leaf_flags(plan.writable),
            &mut Tables::new(self.frames),
            &mut flush,
        );
        if let Err(e) = mapped {
            drop(region);
            drop(st);
            flush.complete(self, space);
            return discard(match e {
                MapError::OutOfTables => Err(FaultError::OutOfMemory),
                _ => Ok(None),
            });
        }
        let entry = RmapEntry {
            space: space.id(),
            va: VirtAddr::new_truncate(leaf_va),
            size,
            offset: 0,
        };
        match region {
            Some((r, first, mut frames)) => {
                frames.insert(first, RegionFrame { head, size });
                let mut rmap = self.rmap.lock();
                Self::adopt_region_frame(&mut rmap, meta, head, r, first);
                // A fresh block: its one mapping cannot overflow the counts.
                self.count_result(Self::add_mapping(&mut rmap, meta, head, entry));
            }
            None => {
                let mut rmap = self.rmap.lock();
                meta.make_managed_mapped();
                rmap.insert(head, entry);
            }
        }
        drop(st);
        flush.complete(self, space);
        Ok(Some(FaultOutcome::Mapped {
            va: VirtAddr::new_truncate(leaf_va),
            size,
        }))
    }
}
