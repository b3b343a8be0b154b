//! The kernel's frame allocator, one front over two lower layers: order-0 blocks go
//! through this CPU's frame cache ([`pcp`](super::pcp)), larger ones straight to the
//! buddy zone ([`zone`](super::zone)). Calls only go down: the front calls the caches and
//! the zone, the caches call the zone, the zone calls nothing above it.

use super::physmap;
use super::{pcp, zone, MemError};
use mm::base::addr::Pfn;
use mm::frame::buddy::MigrateType;
use x86_64::PhysAddr;

pub use zone::{init, table, with_buddy, FrameTablePlacement, Range};

/// Allocate a block of `order` (order 0 through this CPU's frame cache).
pub fn alloc(order: u8, mt: MigrateType) -> Result<Pfn, MemError> {
    if order == 0 {
        pcp::alloc(table(), mt)
    } else {
        with_buddy(|b| b.alloc(order, mt)).map_err(MemError::Alloc)
    }
}

/// Allocate a block of `order` and zero it.
pub fn alloc_zeroed(order: u8, mt: MigrateType) -> Result<PhysAddr, MemError> {
    let pfn = alloc(order, mt)?;
    for i in 0..1u64 << order {
        mm::backend::phys::PhysMem::zero_frame(&physmap::PHYS, pfn.add(i).addr());
    }
    Ok(pfn.addr())
}

/// Free a block obtained from this allocator (order 0 through this CPU's frame cache).
pub fn free(pa: PhysAddr, order: u8) -> Result<(), MemError> {
    if order == 0 {
        pcp::free(table(), Pfn::containing(pa))
    } else {
        with_buddy(|b| b.free(Pfn::containing(pa), order)).map_err(MemError::Free)
    }
}

/// Free blocks (head and order) obtained from this allocator, straight to the buddy
/// zone under one hold of its lock; returns how many were refused.
pub fn free_batch(blocks: &[(Pfn, u8)]) -> u64 {
    with_buddy(|b| {
        let table = b.table();
        blocks
            .iter()
            .filter(|&&(pfn, order)| pcp::free_to_buddy(table, b, pfn, order).is_err())
            .count() as u64
    })
}

/// Allocate exactly the block at `pfn` of `order`; a frame of it that sits in a per-CPU
/// cache is drained back first.
pub fn alloc_at(pfn: Pfn, order: u8, mt: MigrateType) -> Result<Pfn, MemError> {
    match with_buddy(|b| b.alloc_at(pfn, order, mt)) {
        Err(mm::frame::buddy::AllocError::NotFree) => {
            pcp::drain_all(table())?;
            with_buddy(|b| b.alloc_at(pfn, order, mt)).map_err(MemError::Alloc)
        }
        r => r.map_err(MemError::Alloc),
    }
}

/// Allocate exactly each block of `blocks` (head and order), as [`alloc_at`] would one at
/// a time, under one hold of the zone's lock (and a second for those that sat in a
/// per-CPU cache, once the caches are drained); one result per block, in order, appended
/// to `out`.
pub fn alloc_at_batch(
    blocks: &[(Pfn, u8)],
    mt: MigrateType,
    out: &mut alloc::vec::Vec<Result<Pfn, MemError>>,
) {
    let first = out.len();
    with_buddy(|b| b.alloc_at_batch(blocks, mt, out));
    let cached = |r: &Result<Pfn, MemError>| {
        matches!(
            r,
            Err(MemError::Alloc(mm::frame::buddy::AllocError::NotFree))
        )
    };
    if !out[first..].iter().any(cached) {
        return;
    }
    if let Err(e) = pcp::drain_all(table()) {
        for r in out[first..].iter_mut().filter(|r| cached(r)) {
            *r = Err(e);
        }
        return;
    }
    with_buddy(|b| {
        for (r, &(pfn, order)) in out[first..].iter_mut().zip(blocks) {
            if cached(r) {
                *r = b.alloc_at(pfn, order, mt).map_err(MemError::Alloc);
            }
        }
    });
}

/// Empty every per-CPU frame cache, then audit the buddy allocator.
pub fn drain_and_audit() -> Result<mm::frame::buddy::AuditReport, MemError> {
    pcp::drain_all(table())?;
    with_buddy(|b| b.audit()).map_err(MemError::Audit)
}
