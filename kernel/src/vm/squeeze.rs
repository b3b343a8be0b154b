//! Tight memory on purpose, for the tests and benchmarks of contiguity generation: with
//! free memory everywhere a VMA's anchor lands on a free window and every page simply
//! migrates there; to make pages trade places (exchange) there must be no free window.
//!
//! [`Squeeze::take_all`] takes every free frame out of the allocator as kernel blocks
//! (the anchor search sees them as blocked): whole 2 MiB blocks one by one, then the
//! fragments. The caller then gives back exactly what the scenario needs: a pool of
//! unmovable frames for page tables ([`Squeeze::table_pool`]), and runs of adjacent
//! movable 2 MiB blocks ([`Squeeze::movable_run`], [`Squeeze::give_back`]) that the
//! pages it faults in next must come from. Dropping the squeeze gives everything back.
//!
//! Neither the heap nor the free gigabytes may suffer from it: the heap must not grow
//! while memory is squeezed (it would take a 2 MiB block of the scenario, or fail), so
//! [`reserve_heap`] grows it beforehand, from a 2 MiB block of its choosing; and the
//! blocks whose pageblock type changes (that one and the page-table pool) are never
//! taken from a free 1 GiB block, which would then no longer serve 1 GiB allocations of
//! its type.

use crate::mem::{frames, pcp, MemError};
use alloc::vec::Vec;
use mm::base::addr::Pfn;
use mm::frame::buddy::{AllocError, MigrateType};

/// Order of a 2 MiB block.
const ORDER_2M: u8 = 9;
/// Frames in a 2 MiB block.
const PAGES_2M: u64 = 512;
/// Order and frames of a 1 GiB block.
const ORDER_1G: u8 = 18;
const PAGES_1G: u64 = 1 << 18;
/// Heap bytes [`reserve_heap`] makes sure are free in one piece: contiguity generation
/// snapshots all of memory for its anchor search, 6 bits per frame, and may hold two
/// such views at once; and a margin for the rest.
fn heap_slack() -> usize {
    frames::table().len() * 12 / 8 + (1 << 20)
}

/// Make sure the kernel heap has [`heap_slack`] bytes free in one piece, growing it (for
/// good: the heap never shrinks) by 2 MiB blocks that lie in no free gigabyte. Call it
/// before counting free frames.
pub fn reserve_heap() -> Result<(), MemError> {
    let slack = heap_slack();
    let chunks = (slack as u64 + 2 * PAGES_2M * 4096).div_ceil(PAGES_2M * 4096);
    let mut given = Vec::with_capacity(chunks as usize);
    let mut sq = Squeeze::take_all()?;
    // The heap grows by unmovable 2 MiB blocks: the only ones free now.
    for _ in 0..chunks {
        let pfn = sq.retype_one(MigrateType::Unmovable)?;
        give(pfn, ORDER_2M)?;
        given.push(pfn);
    }
    drop(Vec::<u8>::with_capacity(slack));
    for pfn in given {
        if frames::with_buddy(|b| b.alloc_at(pfn, ORDER_2M, MigrateType::Unmovable)).is_ok() {
            sq.pieces.push((pfn, ORDER_2M));
        }
    }
    sq.release()
}

/// Every free frame taken out of the allocator, except what was given back.
pub struct Squeeze {
    /// 2 MiB blocks taken, by frame number.
    blocks: Vec<Pfn>,
    /// Smaller blocks taken: head and order.
    pieces: Vec<(Pfn, u8)>,
    /// The 1 GiB blocks that were free before.
    gigs: Vec<Pfn>,
}

/// The free 1 GiB blocks.
fn free_gigs() -> Vec<Pfn> {
    let frames = frames::table().len() as u64;
    (0..frames)
        .step_by(PAGES_1G as usize)
        .map(Pfn)
        .filter(|&p| frames::with_buddy(|b| b.free_block_containing(p)) == Some((p, ORDER_1G)))
        .collect()
}

fn take(order: u8) -> Option<Pfn> {
    [MigrateType::Movable, MigrateType::Unmovable]
        .into_iter()
        .find_map(|mt| frames::with_buddy(|b| b.alloc(order, mt)).ok())
}

fn give(pfn: Pfn, order: u8) -> Result<(), MemError> {
    frames::with_buddy(|b| b.free(pfn, order)).map_err(MemError::Free)
}

impl Squeeze {
    /// Drain the per-CPU caches and take every free frame.
    pub fn take_all() -> Result<Squeeze, MemError> {
        pcp::drain_all(frames::table())?;
        let areas = frames::with_buddy(|b| b.free_areas());
        let big: usize = areas[ORDER_2M as usize..]
            .iter()
            .enumerate()
            .map(|(k, &n)| n << k)
            .sum();
        let small: usize = areas[..ORDER_2M as usize].iter().sum();
        let mut s = Squeeze {
            blocks: Vec::with_capacity(big),
            pieces: Vec::with_capacity(small + 64),
            gigs: free_gigs(),
        };
        while s.blocks.len() < big {
            match take(ORDER_2M) {
                Some(pfn) => s.blocks.push(pfn),
                None => break,
            }
        }
        for order in (0..ORDER_2M).rev() {
            while s.pieces.len() < small {
                match take(order) {
                    Some(pfn) => s.pieces.push((pfn, order)),
                    None => break,
                }
            }
        }
        s.blocks.sort_unstable();
        Ok(s)
    }

    /// 2 MiB blocks taken now.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Take the first taken 2 MiB block outside the gigabytes that were free off the
    /// list, its pageblock now of type `mt` (allocated, as half blocks, through that type).
    fn retype_one(&mut self, mt: MigrateType) -> Result<Pfn, MemError> {
        let gigs = &self.gigs;
        let at = self
            .blocks
            .iter()
            .position(|&p| !gigs.contains(&Pfn(p.0 & !(PAGES_1G - 1))))
            .ok_or(MemError::Alloc(AllocError::OutOfMemory))?;
        let pfn = self.blocks.remove(at);
        give(pfn, ORDER_2M)?;
        let half = ORDER_2M - 1;
        frames::with_buddy(|b| b.alloc_at(pfn, half, mt)).map_err(MemError::Alloc)?;
        give(pfn, half)?;
        frames::with_buddy(|b| b.alloc_at(pfn, ORDER_2M, mt)).map_err(MemError::Alloc)?;
        Ok(pfn)
    }

    /// Give back half of a taken 2 MiB block as one free unmovable block of 256 frames:
    /// page tables and kernel allocations take it before any movable frame.
    pub fn table_pool(&mut self) -> Result<(), MemError> {
        let pfn = self.retype_one(MigrateType::Unmovable)?;
        give(pfn, ORDER_2M)?;
        let half = ORDER_2M - 1;
        frames::with_buddy(|b| b.alloc_at(pfn, half, MigrateType::Unmovable))
            .map_err(MemError::Alloc)?;
        self.pieces.push((pfn, half));
        Ok(())
    }

    /// The first of `n` adjacent taken 2 MiB blocks of movable pageblocks at or above
    /// `from`, whose neighbours on both sides are taken too (so nothing free touches the
    /// run once it is given back).
    pub fn movable_run(&self, n: usize, from: Pfn) -> Option<Pfn> {
        let movable =
            |p: Pfn| frames::with_buddy(|b| b.pageblock_type(p)) == Some(MigrateType::Movable);
        self.blocks
            .windows(n + 2)
            .filter(|w| w[1] >= from)
            .find(|w| {
                w.windows(2).all(|p| p[1].0 == p[0].0 + PAGES_2M)
                    && w[1..=n].iter().all(|&p| movable(p))
            })
            .map(|w| w[1])
    }

    /// Give back the `n` taken 2 MiB blocks from `first` on.
    pub fn give_back(&mut self, first: Pfn, n: usize) -> Result<(), MemError> {
        for i in 0..n as u64 {
            let pfn = first.add(i * PAGES_2M);
            let at = self
                .blocks
                .binary_search(&pfn)
                .map_err(|_| MemError::Free(mm::frame::buddy::FreeError::NotAllocated))?;
            self.blocks.remove(at);
            give(pfn, ORDER_2M)?;
        }
        Ok(())
    }

    /// Give everything back.
    pub fn release(mut self) -> Result<(), MemError> {
        self.give_all()
    }

    fn give_all(&mut self) -> Result<(), MemError> {
        let mut result = Ok(());
        for pfn in core::mem::take(&mut self.blocks) {
            result = result.and(give(pfn, ORDER_2M));
        }
        for (pfn, order) in core::mem::take(&mut self.pieces) {
            result = result.and(give(pfn, order));
        }
        result
    }
}

impl Drop for Squeeze {
    fn drop(&mut self) {
        if let Err(e) = self.give_all() {
            log::error!("squeeze: giving memory back failed: {e:?}");
        }
    }
}
