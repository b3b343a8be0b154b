//! TLB shootdown: the protocol by which one CPU makes every other CPU that may cache a
//! changed translation drop it, before the caller frees what the translation pointed to.
//!
//! # Mailboxes
//!
//! Each CPU has one mailbox slot per possible initiator. Posting is: store the request
//! pointer in the slot, set the initiator's bit in the target's pending mask, send the
//! IPI. The target's handler takes the whole pending mask at once and serves every posted
//! request, so one IPI may serve several initiators. A slot holds at most one request: an
//! initiator waits for its request synchronously, so its slots are empty again when it
//! next posts, and a request is never dropped and never waits for room. The one
//! exception is an interrupt handler that starts a shootdown while the CPU it interrupted
//! is in its own: the interrupted request may still sit in a slot the handler needs. The
//! handler then waits for that target to take it (it sets the target's pending bit and
//! sends it an IPI itself, since it may have interrupted the posting halfway), serving
//! its own mailbox meanwhile; the target takes requests without help from this CPU, so
//! the wait ends, and neither request is lost or overwritten.
//!
//! The initiator flushes its own TLB while the remote CPUs flush theirs, and waits for the
//! acknowledgements *while serving its own mailbox*: two CPUs shooting each other down,
//! or one shooting down with interrupts disabled, always make progress.
//!
//! # The request
//!
//! A request is a [`FlushBatch`] and a count of the targets that have not acknowledged.
//! The batch says:
//!
//! - `pages`: the leaves to invalidate one by one (their address and size), at most
//!   [`FULL_FLUSH_THRESHOLD`];
//! - `full`: flush everything instead (asked for, or past the threshold); `pages` is
//!   then ignored;
//! - `kernel`: kernel-half (global) translations are concerned, so a full flush must
//!   drop global entries too;
//! - `tables`: the caller frees page-table frames once the shootdown returns, so every
//!   target must drop its paging-structure caches (a target may otherwise keep walking a
//!   table that has been freed and reused). A batch that only frees tables is not empty:
//!   it reaches every target like any other.
//!
//! The count starts at the number of remote targets; each target decrements it once, and
//! the initiator returns when it reaches zero. The request lives on the initiator's stack
//! and is dead once the count is zero.
//!
//! # When a target acknowledges
//!
//! A target acknowledges after its flush, with one exception: a request that concerns
//! only user-half translations and frees no page-table frame is acknowledged *before* the
//! flush. That is safe because the target, inside its handler, cannot touch a user address
//! before it has flushed, and the frames the initiator frees are only reachable through
//! user translations; the target copies the request first, since it dies once all have
//! acknowledged. A request that frees tables is never acknowledged early: the
//! paging-structure caches are used by speculative walks at any time, handler or not.

use crate::base::addr::PageSize;
pub use crate::base::cpuset::{AtomicCpuSet, CpuSet, MAX_CPUS};
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

/// Past this many pages one full flush replaces page-by-page invalidation.
///
/// Chosen from the kernel's `tlb.threshold` benchmark: invalidating N pages one by one and
/// touching them again stayed cheaper than a full flush plus the refill of a 512-page
/// working set up to N = 128 (ratio 0.56) and lost from N = 256 (ratio 1.11) under QEMU;
/// 128 keeps page-by-page flushing where it measured cheaper. A smaller working set moves
/// the crossover down, which is why this is not simply the measured crossover.
pub const FULL_FLUSH_THRESHOLD: usize = 128;

/// First address of the kernel half.
const KERNEL_HALF: u64 = 0xFFFF_8000_0000_0000;

/// Why a shootdown was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShootdownError {
    /// A range is empty (`start >= end`) or not page aligned.
    EmptyRange,
    /// A range has a non-canonical end.
    NonCanonical,
    /// A target CPU is not online.
    OfflineCpu(u32),
}

/// What must be invalidated: up to [`FULL_FLUSH_THRESHOLD`] pages, or everything; and
/// whether page-table frames are freed after it (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushBatch {
    pages: [(u64, PageSize); FULL_FLUSH_THRESHOLD],
    n: usize,
    full: bool,
    kernel: bool,
    tables: bool,
}

impl Default for FlushBatch {
    fn default() -> Self {
        FlushBatch::new()
    }
}

impl FlushBatch {
    /// Nothing to flush yet.
    pub const fn new() -> FlushBatch {
        FlushBatch {
            pages: [(0, PageSize::Size4K); FULL_FLUSH_THRESHOLD],
            n: 0,
            full: false,
            kernel: false,
            tables: false,
        }
    }

    /// Add the leaf of `size` at `va`; past the threshold the batch becomes a full flush.
    pub fn add_page(&mut self, va: u64, size: PageSize) {
        self.kernel |= va >= KERNEL_HALF;
        if self.full {
            return;
        }
        if self.n == FULL_FLUSH_THRESHOLD {
            self.full = true;
            return;
        }
        self.pages[self.n] = (va, size);
        self.n += 1;
    }

    /// Add `[start, end)` in `size` steps, after checking it is a real range.
    pub fn add_range(
        &mut self,
        start: u64,
        end: u64,
        size: PageSize,
    ) -> Result<(), ShootdownError> {
        if start >= end || !start.is_multiple_of(size.bytes()) || !end.is_multiple_of(size.bytes())
        {
            return Err(ShootdownError::EmptyRange);
        }
        let canonical = |a: u64| !(0x0000_8000_0000_0000..KERNEL_HALF).contains(&a);
        if !canonical(start)
            || !canonical(end - 1)
            || (start < KERNEL_HALF) != (end - 1 < KERNEL_HALF)
        {
            return Err(ShootdownError::NonCanonical);
        }
        if (end - start) / size.bytes() > FULL_FLUSH_THRESHOLD as u64 {
            self.kernel |= end > KERNEL_HALF;
            self.full = true;
            return Ok(());
        }
        let mut va = start;
        while va < end {
            self.add_page(va, size);
            va += size.bytes();
        }
        Ok(())
    }

    /// Flush everything; `kernel` says whether kernel (global) mappings are concerned.
    pub fn set_full(&mut self, kernel: bool) {
        self.full = true;
        self.kernel |= kernel;
    }

    /// Page-table frames are freed once this batch is shot down: every target must drop
    /// its paging-structure caches, and acknowledges only after it did.
    pub fn set_frees_tables(&mut self) {
        self.tables = true;
    }

    /// Whether page-table frames are freed once this batch is shot down.
    pub fn frees_tables(&self) -> bool {
        self.tables
    }

    /// Whether there is nothing to flush (no page, no full flush, no table freed).
    pub fn is_empty(&self) -> bool {
        !self.full && self.n == 0 && !self.tables
    }

    /// Whether this is a full flush.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Whether kernel-half (global) translations are concerned.
    pub fn touches_kernel(&self) -> bool {
        self.kernel
    }

    /// The pages to invalidate one by one (empty for a full flush).
    pub fn pages(&self) -> &[(u64, PageSize)] {
        if self.full {
            &[]
        } else {
            &self.pages[..self.n]
        }
    }
}

/// One shootdown in flight: the batch and how many targets have not acknowledged (see
/// the module doc).
pub struct Request {
    batch: FlushBatch,
    pending: AtomicU32,
}

/// What the protocol needs from the machine.
pub trait TlbArch {
    /// The running CPU's index (below [`MAX_CPUS`]).
    fn this_cpu(&self) -> u32;
    /// Interrupt every CPU of `targets` so that it calls [`Mailboxes::serve`].
    fn send_ipi(&self, targets: CpuSet);
    /// Invalidate `batch` in the running CPU's TLB; when the batch
    /// [frees tables](FlushBatch::frees_tables), drop the paging-structure caches too
    /// (even when it lists no page and is not full).
    fn flush_local(&self, batch: &FlushBatch);
    /// Called in every turn of the wait for acknowledgements (a `pause` on hardware).
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

/// Every CPU's mailbox.
pub struct Mailboxes {
    /// `slots[target * MAX_CPUS + initiator]`: the initiator's request for the target.
    slots: [AtomicPtr<Request>; MAX_CPUS * MAX_CPUS],
    /// Per target: initiators that posted a request not yet taken.
    pending: [AtomicCpuSet; MAX_CPUS],
    /// Per CPU: requests served (for statistics and tests).
    served: [AtomicU64; MAX_CPUS],
    /// Online CPUs (targets must be among them).
    online: AtomicCpuSet,
}

impl Default for Mailboxes {
    fn default() -> Self {
        Mailboxes::new()
    }
}

impl Mailboxes {
    /// Empty mailboxes, no CPU online.
    pub const fn new() -> Mailboxes {
        Mailboxes {
            slots: [const { AtomicPtr::new(ptr::null_mut()) }; MAX_CPUS * MAX_CPUS],
            pending: [const { AtomicCpuSet::new() }; MAX_CPUS],
            served: [const { AtomicU64::new(0) }; MAX_CPUS],
            online: AtomicCpuSet::new(),
        }
    }

    /// Mark `cpu` online (it will serve its mailbox from now on).
    pub fn set_online(&self, cpu: u32) {
        self.online.insert(cpu);
    }

    /// The online CPUs.
    pub fn online(&self) -> CpuSet {
        self.online.load()
    }

    /// Requests `cpu` has served.
    pub fn served(&self, cpu: u32) -> u64 {
        self.served
            .get(cpu as usize)
            .map_or(0, |s| s.load(Ordering::Relaxed))
    }

    /// Invalidate `batch` on every CPU of `targets` (the running CPU flushes locally if it
    /// is among them) and return when all have acknowledged. Nothing is done for an empty
    /// batch (a batch that frees tables is not empty) or target set. An interrupt handler
    /// may call this while the CPU it interrupted is in its own shootdown (see the module
    /// doc).
    pub fn shootdown<A: TlbArch>(
        &self,
        arch: &A,
        targets: CpuSet,
        batch: &FlushBatch,
    ) -> Result<(), ShootdownError> {
        let online = self.online();
        if let Some(cpu) = targets.iter().find(|&c| !online.contains(c)) {
            return Err(ShootdownError::OfflineCpu(cpu));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let me = arch.this_cpu();
        let mut remote = targets;
        remote.remove(me);
        let request = Request {
            batch: *batch,
            pending: AtomicU32::new(remote.len() as u32),
        };
        let req_ptr = &request as *const Request as *mut Request;
        for t in remote.iter() {
            let slot = &self.slots[t as usize * MAX_CPUS + me as usize];
            let mut nudged = false;
            while slot
                .compare_exchange(
                    ptr::null_mut(),
                    req_ptr,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                // The slot holds the request of the shootdown this handler interrupted,
                // maybe posted without its pending bit or IPI yet: announce it ourselves
                // and wait for the target to take it.
                if !nudged {
                    self.pending[t as usize].insert(me);
                    arch.send_ipi(CpuSet::single(t));
                    nudged = true;
                }
                self.serve(arch);
                arch.relax();
            }
            self.pending[t as usize].insert(me);
        }
        if !remote.is_empty() {
            arch.send_ipi(remote);
        }
        if targets.contains(me) {
            arch.flush_local(batch);
        }
        while request.pending.load(Ordering::Acquire) != 0 {
            self.serve(arch);
            arch.relax();
        }
        Ok(())
    }

    /// Serve every request posted to the running CPU (its IPI handler calls this, and so
    /// does a CPU waiting for its own shootdown). Returns how many were served.
    pub fn serve<A: TlbArch>(&self, arch: &A) -> usize {
        let me = arch.this_cpu();
        let mut served = 0;
        loop {
            let initiators = self.pending[me as usize].take();
            if initiators.is_empty() {
                break;
            }
            for i in initiators.iter() {
                let slot = me as usize * MAX_CPUS + i as usize;
                let req = self.slots[slot].swap(ptr::null_mut(), Ordering::AcqRel);
                if req.is_null() {
                    continue;
                }
                // SAFETY: the initiator keeps its request alive until every target has
                // acknowledged, and this CPU has not acknowledged yet.
                let req = unsafe { &*req };
                let batch = req.batch;
                if batch.touches_kernel() || batch.frees_tables() {
                    arch.flush_local(&batch);
                    req.pending.fetch_sub(1, Ordering::AcqRel);
                } else {
                    // Early acknowledgement: user-half only, no table freed, and we stay
                    // in the handler until the flush is done.
                    req.pending.fetch_sub(1, Ordering::AcqRel);
                    arch.flush_local(&batch);
                }
                served += 1;
            }
        }
        self.served[me as usize].fetch_add(served as u64, Ordering::Relaxed);
        served
    }
}
