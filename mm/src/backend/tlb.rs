//! The TLB shootdown the address-space layer asks the kernel for.

use crate::backend::shootdown::{FlushBatch, ShootdownError};
use crate::base::cpuset::CpuSet;

/// Synchronous TLB shootdown, implemented by the kernel with IPIs.
pub trait TlbShootdown: Sync {
    /// Invalidate `batch` on every CPU in `cpus` (the current CPU included if it is in
    /// the set: the CPUs that had the address spaces of the change loaded when it was
    /// made), and return `Ok` only after every one of them has flushed. The batch holds
    /// user-half leaves (past the threshold, a full flush); when it
    /// [frees tables](FlushBatch::frees_tables), the unlinked page-table frames are freed
    /// after this returns, so every target must drop its paging-structure caches before
    /// acknowledging, even when the batch lists no leaf. On `Err` nothing the change
    /// released is freed (it leaks).
    fn shootdown(&self, cpus: CpuSet, batch: &FlushBatch) -> Result<(), ShootdownError>;
}
