//! Synchronous collapse of a range of an address space into huge leaves, with the
//! semantics of Linux's `MADV_COLLAPSE` (6.1): independent of the daemon's settings and
//! limits, refused only for VMAs marked never-huge; missing pages are faulted in; the
//! range is clamped to huge alignment; it goes VMA by VMA and reports, per 2 MiB or
//! 1 GiB range, what happened or why not, with the error kinds of the RFC (no memory,
//! transient, invalid).
//!
//! A range that is already contiguous and aligned is promoted in place. Otherwise one of
//! two ways, both kept so they can be compared:
//! - **in place** ([`CollapseMethod::InPlace`]): contiguity generation of the VMA (which
//!   moves only the pages not yet where the anchor puts them), then promotion;
//! - **copy** ([`CollapseMethod::Copy`], Linux's way): a free huge block is found (or,
//!   when none is free, an aligned window is compacted for it, see [`super::compact`]),
//!   every page of the range is migrated into its frame at the same offset, then
//!   promotion.
//!
//! [`CollapseMethod::Auto`] tries in place first (it never copies more than the copy
//! does, and usually far less) and copies when that fails. A 1 GiB range collapses its
//! 2 MiB ranges first.

use super::compact::CompactError;
use super::HugeError;
use crate::aspace::vmstat::Event;
use crate::aspace::{AddressSpace, Mm, SpaceError};
use crate::backend::phys::PhysMem;
use crate::base::addr::{PageSize, Pfn, PAGE_SIZE};
use crate::frame::buddy::MigrateType;
use crate::mapping::vma::{check_user_range, HugePolicy};
use crate::ops::contig::ContigOptions;
use crate::ops::migrate::Destination;
use alloc::sync::Arc;
use alloc::vec::Vec;
use x86_64::VirtAddr;

/// The leaf size a collapse aims for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CollapseTarget {
    /// 2 MiB leaves.
    Size2M,
    /// 1 GiB leaves (a range that cannot be one is left to 2 MiB).
    Size1G,
    /// 1 GiB where a VMA covers an aligned gigabyte and 1 GiB leaves are allowed, else
    /// 2 MiB.
    Largest,
}

/// How a range that is not contiguous becomes so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CollapseMethod {
    /// In place, else by copy.
    Auto,
    /// Contiguity generation, then promotion.
    InPlace,
    /// Copy into a new huge block, then promotion.
    Copy,
}

/// The options of [`Mm::collapse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CollapseOptions {
    /// The leaf size aimed for.
    pub target: CollapseTarget,
    /// How non-contiguous ranges are made contiguous.
    pub method: CollapseMethod,
}

impl Default for CollapseOptions {
    fn default() -> Self {
        CollapseOptions {
            target: CollapseTarget::Largest,
            method: CollapseMethod::Auto,
        }
    }
}

/// How a range became huge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Collapsed {
    /// It was mapped by a huge leaf already.
    AlreadyHuge,
    /// Its pages were contiguous and aligned: promoted in place.
    Promoted,
    /// Made contiguous by contiguity generation, then promoted.
    InPlace,
    /// Copied into a new huge block, then promoted.
    Copied,
}

/// Why a range did not become huge, in the RFC's kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CollapseFailure {
    /// No memory for a page, a table or a huge block (`ENOMEM`).
    NoMemory,
    /// Transient: a page is pinned, moving or being unmapped (`EAGAIN`).
    Busy,
    /// The range cannot be huge: never-huge VMA, shared or unmovable pages, size not
    /// allowed (`EINVAL`).
    Invalid,
}

/// What happened to one huge-aligned range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RangeOutcome {
    /// First address.
    pub start: u64,
    /// The size aimed for.
    pub size: PageSize,
    /// How it became huge, or why not with the cause.
    pub result: Result<Collapsed, (CollapseFailure, HugeError)>,
}

fn kind(e: HugeError) -> CollapseFailure {
    match e {
        HugeError::Busy | HugeError::Pinned | HugeError::NotContiguous(_) => CollapseFailure::Busy,
        HugeError::Space(SpaceError::OutOfMemory)
        | HugeError::Compact(CompactError::NoWindow | CompactError::NoDestination) => {
            CollapseFailure::NoMemory
        }
        HugeError::Compact(CompactError::Migrate(_) | CompactError::Taken) => CollapseFailure::Busy,
        _ => CollapseFailure::Invalid,
    }
}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Collapse `[start, start + len)` of `space` (see the module doc); one outcome per
    /// huge-aligned range inside it, VMA by VMA. Refused as a whole only for a bad range
    /// or a destroyed or foreign space.
    pub fn collapse(
        &self,
        space: &Arc<AddressSpace<'m, M>>,
        start: u64,
        len: u64,
        opts: &CollapseOptions,
    ) -> Result<Vec<RangeOutcome>, SpaceError> {
        self.check_space(space)?;
        let (start, end) = check_user_range(start, len)?;
        if space.is_destroyed() {
            return Err(SpaceError::SpaceDestroyed);
        }
        let mut out = Vec::new();
        for vma in space.vmas() {
            let (s, e) = (vma.start.max(start), vma.end.min(end));
            if s >= e {
                continue;
            }
            let g1 = PageSize::Size1G.bytes();
            let big = match opts.target {
                CollapseTarget::Size2M => false,
                CollapseTarget::Size1G | CollapseTarget::Largest => {
                    self.max_leaf() == PageSize::Size1G
                }
            };
            let mut at = s.next_multiple_of(PageSize::Size2M.bytes());
            while at + PageSize::Size2M.bytes() <= e {
                let size = if big && at.is_multiple_of(g1) && at + g1 <= e {
                    PageSize::Size1G
                } else {
                    PageSize::Size2M
                };
                let result = if vma.flags.huge == HugePolicy::Never {
                    Err((CollapseFailure::Invalid, HugeError::NeverHuge))
                } else {
                    self.collapse_range(space, at, size, opts.method)
                };
                self.vmstat.count(
                    match (result, size) {
                        (Ok(Collapsed::Copied), PageSize::Size1G) => Event::CollapseCopy1g,
                        (Ok(Collapsed::Copied), _) => Event::CollapseCopy2m,
                        (Ok(Collapsed::InPlace), PageSize::Size1G) => Event::CollapseInPlace1g,
                        (Ok(Collapsed::InPlace), _) => Event::CollapseInPlace2m,
                        (Ok(_), _) => Event::CollapseInPlace2m,
                        (Err(_), _) => Event::CollapseFailed,
                    },
                    u64::from(!matches!(
                        result,
                        Ok(Collapsed::AlreadyHuge | Collapsed::Promoted)
                    )),
                );
                out.push(RangeOutcome {
                    start: at,
                    size,
                    result,
                });
                at += size.bytes();
            }
        }
        Ok(out)
    }

    /// One range: fault in, promote, else make contiguous (in place or by copy) and
    /// promote.
    fn collapse_range(
        &self,
        space: &Arc<AddressSpace<'m, M>>,
        va: u64,
        size: PageSize,
        method: CollapseMethod,
    ) -> Result<Collapsed, (CollapseFailure, HugeError)> {
        let fail = |e: HugeError| (kind(e), e);
        if let Some(t) = space.translate(va) {
            if t.size >= size {
                return Ok(Collapsed::AlreadyHuge);
            }
        }
        self.populate(space, va, size.bytes())
            .map_err(|e| fail(HugeError::from(e)))?;
        if size == PageSize::Size1G {
            // The 2 MiB ranges first: they must be huge before the gigabyte can be.
            let mut at = va;
            while at < va + size.bytes() {
                self.collapse_range(space, at, PageSize::Size2M, method)?;
                at += PageSize::Size2M.bytes();
            }
        }
        match space.translate(va) {
            Some(t) if t.size >= size => return Ok(Collapsed::AlreadyHuge),
            _ => {}
        }
        match self.promote(space, va, size) {
            Ok(()) => return Ok(Collapsed::Promoted),
            Err(HugeError::NotContiguous(_)) => {}
            Err(e) => return Err(fail(e)),
        }
        if method != CollapseMethod::Copy {
            let contiguous = self.make_vma_contiguous(space, va, &ContigOptions::default());
            if contiguous.is_ok() && self.promote(space, va, size).is_ok() {
                return Ok(Collapsed::InPlace);
            }
            if method == CollapseMethod::InPlace {
                return Err(fail(
                    self.promote(space, va, size)
                        .err()
                        .unwrap_or(HugeError::Busy),
                ));
            }
        }
        self.copy_into_free_block(space, va, size).map_err(fail)?;
        self.promote(space, va, size).map_err(fail)?;
        Ok(Collapsed::Copied)
    }

    /// Migrate every block of `[va, va + size)` into a free, aligned block of `size`, at
    /// the same offsets (the copying collapse); without a free block, compact a window
    /// first (see [`super::compact`]).
    fn copy_into_free_block(
        &self,
        space: &AddressSpace<'m, M>,
        va: u64,
        size: PageSize,
    ) -> Result<(), HugeError> {
        let child = size.smaller().ok_or(HugeError::BadSize)?;
        let order = size.order();
        // A free block is given back at once: the migrations take its frames one by one
        // (another allocation may take some meanwhile; those pages then fail, Busy).
        // Without one, a window is compacted for the range.
        let window = match self.frames.alloc(order, MigrateType::Movable, None) {
            Ok(window) => {
                if self.frames.free(window, order).is_err() {
                    return Err(HugeError::Inconsistent);
                }
                window
            }
            Err(_) => self
                .compact_window(space, va, size)
                .map_err(HugeError::Compact)?,
        };
        let step = child.bytes() / PAGE_SIZE;
        let mut requests = Vec::new();
        for (i, (_, t)) in space
            .leaves()
            .into_iter()
            .filter(|(v, _)| {
                let v = v.as_u64();
                v >= va && v < va + size.bytes()
            })
            .enumerate()
        {
            if t.size != child {
                return Err(HugeError::NotContiguous(
                    crate::paging::CollapseError::NotLeaf {
                        va: VirtAddr::new_truncate(va + i as u64 * child.bytes()),
                    },
                ));
            }
            let head = Pfn::containing(t.leaf_base_pa);
            let target = window.add(i as u64 * step);
            if head != target {
                requests.push((head, Destination::Frame(target)));
            }
        }
        let moved = self.migrate_batch(&requests);
        if moved.iter().all(|r| r.is_ok()) {
            Ok(())
        } else {
            Err(HugeError::Busy)
        }
    }
}
