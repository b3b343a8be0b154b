//! Fault injection for frame sources: make the n-th allocation fail, fail every
//! allocation of some orders, or pin a page through the [`Mm`] just before the n-th
//! allocation, as a device would in the middle of a batch. The kernel's frame source and
//! the host tests' share this one [`Injector`].

use super::{AddressSpace, Mm, PinError};
use crate::backend::phys::PhysMem;
use crate::base::addr::Pfn;
use crate::frame::buddy::AllocError;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use spin::Mutex;

/// A page to pin: (when, the address space, the address).
type PinAt<'m, M> = Option<(usize, Arc<AddressSpace<'m, M>>, u64)>;

/// Faults to inject into the allocations of a frame source. Allocations are counted only
/// while something is armed.
pub struct Injector<'m, M: PhysMem> {
    armed: AtomicBool,
    count: AtomicUsize,
    fail_at: AtomicUsize,
    fail_orders: AtomicU64,
    pin_at: Mutex<PinAt<'m, M>>,
    pinned: Mutex<Option<Result<Pfn, PinError>>>,
}

impl<'m, M: PhysMem> Default for Injector<'m, M> {
    fn default() -> Self {
        Injector::new()
    }
}

impl<'m, M: PhysMem> Injector<'m, M> {
    /// Nothing injected.
    pub const fn new() -> Injector<'m, M> {
        Injector {
            armed: AtomicBool::new(false),
            count: AtomicUsize::new(0),
            fail_at: AtomicUsize::new(usize::MAX),
            fail_orders: AtomicU64::new(0),
            pin_at: Mutex::new(None),
            pinned: Mutex::new(None),
        }
    }

    /// Make the `n`-th allocation from now (0: the next one) fail.
    pub fn fail_nth(&self, n: usize) {
        self.armed.store(true, Ordering::Release);
        let now = self.count.load(Ordering::Acquire);
        self.fail_at.store(now + n, Ordering::Release);
    }

    /// Make every allocation of an order in `orders` fail (empty: none).
    pub fn fail_orders(&self, orders: &[u8]) {
        self.armed.store(true, Ordering::Release);
        let mask = orders
            .iter()
            .filter(|&&o| o < 64)
            .fold(0u64, |m, &o| m | 1 << o);
        self.fail_orders.store(mask, Ordering::Release);
    }

    /// Pin what `va` of `space` maps, through the `Mm` given to
    /// [`on_alloc`](Self::on_alloc), just before the `n`-th allocation from now. That
    /// allocation must not be made under a lock `pin` takes (migration destinations and
    /// fault frames are allocated outside them).
    pub fn pin_at_nth(&self, n: usize, space: &Arc<AddressSpace<'m, M>>, va: u64) {
        self.armed.store(true, Ordering::Release);
        let now = self.count.load(Ordering::Acquire);
        *self.pin_at.lock() = Some((now + n, space.clone(), va));
    }

    /// What the injected pin returned, once it happened.
    pub fn injected_pin(&self) -> Option<Result<Pfn, PinError>> {
        *self.pinned.lock()
    }

    /// Stop injecting; returns the allocations counted since the first arming.
    pub fn disarm(&self) -> usize {
        self.armed.store(false, Ordering::Release);
        self.fail_at.store(usize::MAX, Ordering::Release);
        self.fail_orders.store(0, Ordering::Release);
        *self.pin_at.lock() = None;
        *self.pinned.lock() = None;
        self.count.swap(0, Ordering::AcqRel)
    }

    /// A batch of exact allocations (head and order of each block): each is counted as
    /// [`on_alloc`](Self::on_alloc) counts one, in order and before any is served (an
    /// injected pin takes the locks of the space and the reverse map, which serving may
    /// not hold), then `serve` allocates the blocks not made to fail, in one call. One
    /// result per block, in order, appended to `out`.
    pub fn alloc_at_batch(
        &self,
        mm: Option<&Mm<'m, M>>,
        blocks: &[(Pfn, u8)],
        out: &mut Vec<Result<Pfn, AllocError>>,
        serve: impl FnOnce(&[(Pfn, u8)], &mut Vec<Result<Pfn, AllocError>>),
    ) {
        if !self.armed.load(Ordering::Acquire) {
            // Nothing to count or fail: the blocks go to `serve` as they are.
            serve(blocks, out);
            return;
        }
        let failing: Vec<bool> = blocks
            .iter()
            .map(|&(_, order)| self.on_alloc(order, mm))
            .collect();
        let asked: Vec<(Pfn, u8)> = blocks
            .iter()
            .zip(&failing)
            .filter(|&(_, &fail)| !fail)
            .map(|(&b, _)| b)
            .collect();
        let mut served = Vec::with_capacity(asked.len());
        serve(&asked, &mut served);
        let mut served = served.into_iter();
        out.extend(failing.iter().map(|&fail| {
            if fail {
                Err(AllocError::OutOfMemory)
            } else {
                served.next().unwrap_or(Err(AllocError::OutOfMemory))
            }
        }));
    }

    /// Count an allocation of `order` (while armed), pin through `mm` if a pin is due,
    /// and say whether the allocation must fail.
    pub fn on_alloc(&self, order: u8, mm: Option<&Mm<'m, M>>) -> bool {
        if !self.armed.load(Ordering::Acquire) {
            return false;
        }
        let n = self.count.fetch_add(1, Ordering::AcqRel);
        let due = {
            let mut at = self.pin_at.lock();
            match &*at {
                Some((when, _, _)) if *when == n => at.take(),
                _ => None,
            }
        };
        if let (Some((_, space, va)), Some(mm)) = (due, mm) {
            let result = mm.pin(&space, va);
            *self.pinned.lock() = Some(result);
        }
        n == self.fail_at.load(Ordering::Acquire)
            || (order < 64 && self.fail_orders.load(Ordering::Acquire) & (1 << order) != 0)
    }
}
