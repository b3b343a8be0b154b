//! The TLB shootdown the address-space layer asks the kernel for.

use crate::base::addr::PageSize;
use crate::base::cpuset::CpuSet;
use x86_64::VirtAddr;

/// Synchronous TLB shootdown, implemented by the kernel with IPIs.
pub trait TlbShootdown: Sync {
    /// Invalidate `ranges` (or everything of the address space, when `full`) on every CPU
    /// in `cpus` (the current CPU included if it is in the mask), and return only after
    /// every one of them has flushed. `ranges` are user-half leaves of the address space
    /// the mask belongs to; page-table frames unlinked by the change are freed after this
    /// returns, so the flush must cover paging-structure caches too (`invlpg` does).
    fn shootdown(&self, cpus: CpuSet, ranges: &[(VirtAddr, PageSize)], full: bool);
}
