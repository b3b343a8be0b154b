//! Per-CPU frame caches: small stacks of order-0 frames in front of the buddy allocator,
//! so that the common single-frame allocation and free take no shared lock.
//!
//! A cache refills and spills in batches under one buddy-lock acquisition. Cached frames
//! are allocated as far as the buddy allocator knows and carry the `CACHED` flag, which
//! makes a second free of the same frame a typed error. A frame leaves a cache looking
//! like a fresh allocation (one reference, no owner), whatever its last user left in its
//! metadata; frames the buddy allocator would refuse to free (pinned, mapped) never enter
//! one.
//!
//! Two CPUs freeing the same frame at once (a double free) must not both cache it. A free
//! checks that the frame is not cached and claims it (sets `CACHED`) in one step under
//! the lock of the frame's stripe ([`FREE_CLAIMS`]); a spill frees each frame to the
//! buddy allocator under that lock too, so a concurrent free sees the frame either cached
//! or free, never in between. A stripe lock is taken last and nothing is taken under it.
//!
//! [`drain_all`] returns every cached frame (before an audit, before comparing free
//! areas, or when a specific frame is wanted that may be sitting in a cache).

use super::zone::with_buddy;
use super::MemError;
use crate::arch::percpu::{self, MAX_CPUS};
use mm::base::addr::Pfn;
use mm::frame::buddy::{AllocError, BuddyAllocator, FreeError, MigrateType};
use mm::frame::meta::{FrameFlags, FrameState, FrameTable};
use spin::Mutex;

/// Frames a cache holds at most.
const CAPACITY: usize = 32;
/// Frames moved between a cache and the buddy allocator at once.
const BATCH: usize = 16;

struct Cache {
    frames: [Pfn; CAPACITY],
    len: usize,
}

impl Cache {
    const fn new() -> Cache {
        Cache {
            frames: [Pfn(0); CAPACITY],
            len: 0,
        }
    }
}

/// `[cpu][migrate type]`; a CPU only touches its own caches, except for draining.
static CACHES: [[Mutex<Cache>; 2]; MAX_CPUS] = [const {
    [
        const { Mutex::new(Cache::new()) },
        const { Mutex::new(Cache::new()) },
    ]
}; MAX_CPUS];

/// Stripes of the free-claim locks: frame `pfn` takes stripe `pfn % FREE_STRIPES`.
const FREE_STRIPES: usize = 64;

/// The free-claim locks (see the module doc).
static FREE_CLAIMS: [Mutex<()>; FREE_STRIPES] = [const { Mutex::new(()) }; FREE_STRIPES];

/// Run `f` under the free-claim lock of `pfn`'s stripe.
fn claimed<R>(pfn: Pfn, f: impl FnOnce() -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _claim = crate::arch::tlb::lock_serving(&FREE_CLAIMS[pfn.0 as usize % FREE_STRIPES]);
        f()
    })
}

fn index(mt: MigrateType) -> usize {
    match mt {
        MigrateType::Movable => 0,
        MigrateType::Unmovable => 1,
    }
}

fn with_cache<R>(mt: MigrateType, f: impl FnOnce(&mut Cache) -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let cpu = percpu::cpu_index() as usize;
        f(&mut crate::arch::tlb::lock_serving(&CACHES[cpu][index(mt)]))
    })
}

/// One order-0 frame of type `mt`, from this CPU's cache when it has one.
pub fn alloc(table: FrameTable<'static>, mt: MigrateType) -> Result<Pfn, MemError> {
    with_cache(mt, |c| {
        if c.len == 0 {
            with_buddy(|b| {
                while c.len < BATCH {
                    match b.alloc(0, mt) {
                        Ok(pfn) => {
                            c.frames[c.len] = pfn;
                            c.len += 1;
                        }
                        Err(AllocError::OutOfMemory) if c.len > 0 => break,
                        Err(e) => return Err(MemError::Alloc(e)),
                    }
                    if let Some(meta) = table.get(c.frames[c.len - 1]) {
                        meta.insert_flags(FrameFlags::CACHED);
                    }
                }
                Ok(())
            })?;
        }
        c.len -= 1;
        let pfn = c.frames[c.len];
        if let Some(meta) = table.get(pfn) {
            // Handed out as the buddy allocator hands out a fresh block: one reference,
            // no owner (a cached frame keeps what its last user left).
            meta.reset_allocated();
            meta.remove_flags(FrameFlags::CACHED);
        }
        Ok(pfn)
    })
}

/// Give back an order-0 frame: into this CPU's cache, spilling half of it to the buddy
/// allocator when full. Frames the cache must not take (not an allocated order-0 frame,
/// already cached, pinned) go to the buddy allocator, which reports the precise error.
pub fn free(table: FrameTable<'static>, pfn: Pfn) -> Result<(), MemError> {
    let Some(meta) = table.get(pfn) else {
        return Err(MemError::Free(FreeError::OutOfRange));
    };
    // Claimed for a cache (the migrate type of its cache), or for the buddy allocator.
    let claim = claimed(pfn, || {
        if meta.flags().contains(FrameFlags::CACHED) {
            return Err(MemError::Free(FreeError::DoubleFree));
        }
        let cacheable = meta.state() == FrameState::Allocated
            && meta.order() == 0
            && !meta
                .flags()
                .intersects(FrameFlags::PINNED | FrameFlags::PAGETABLE)
            && meta.mapcount() == 0
            && meta.pincount() == 0;
        if !cacheable {
            return Ok(None);
        }
        meta.insert_flags(FrameFlags::CACHED);
        Ok(Some(if meta.flags().contains(FrameFlags::MOVABLE) {
            MigrateType::Movable
        } else {
            MigrateType::Unmovable
        }))
    })?;
    let Some(mt) = claim else {
        return with_buddy(|b| b.free(pfn, 0)).map_err(MemError::Free);
    };
    with_cache(mt, |c| {
        if c.len == CAPACITY {
            spill(table, c, CAPACITY / 2)?;
        }
        c.frames[c.len] = pfn;
        c.len += 1;
        Ok(())
    })
}

/// Free a block straight to the buddy allocator `b` (whose lock the caller holds), under
/// the free-claim lock of its head's stripe: a frame sitting in a cache is refused as a
/// double free, as [`free`] refuses it.
pub fn free_to_buddy(
    table: FrameTable<'static>,
    b: &mut BuddyAllocator<'static>,
    pfn: Pfn,
    order: u8,
) -> Result<(), MemError> {
    claimed(pfn, || {
        if table
            .get(pfn)
            .is_some_and(|meta| meta.flags().contains(FrameFlags::CACHED))
        {
            return Err(MemError::Free(FreeError::DoubleFree));
        }
        b.free(pfn, order).map_err(MemError::Free)
    })
}

fn spill(table: FrameTable<'static>, c: &mut Cache, keep: usize) -> Result<(), MemError> {
    with_buddy(|b| {
        while c.len > keep {
            c.len -= 1;
            let pfn = c.frames[c.len];
            claimed(pfn, || {
                let freed = b.free(pfn, 0);
                if let Some(meta) = table.get(pfn) {
                    meta.remove_flags(FrameFlags::CACHED);
                }
                freed
            })
            .map_err(MemError::Free)?;
        }
        Ok(())
    })
}

/// Return every cached frame of every CPU to the buddy allocator.
pub fn drain_all(table: FrameTable<'static>) -> Result<usize, MemError> {
    let mut drained = 0;
    for cpu in CACHES.iter() {
        for cache in cpu {
            x86_64::instructions::interrupts::without_interrupts(|| {
                let mut c = crate::arch::tlb::lock_serving(cache);
                drained += c.len;
                spill(table, &mut c, 0)
            })?;
        }
    }
    Ok(drained)
}

/// Frames sitting in all caches now.
pub fn cached() -> usize {
    CACHES
        .iter()
        .flatten()
        .map(|c| x86_64::instructions::interrupts::without_interrupts(|| c.lock().len))
        .sum()
}
