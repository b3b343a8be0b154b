//! The memory manager's [`FrameSource`]: the kernel's buddy allocator (order 0 through
//! the per-CPU caches), allocation on a given NUMA node through [`super::numa`], and a
//! fault-injection hook so tests can make an allocation fail, or pin a frame just before
//! one, as a device would in the middle of a migration batch.

use super::numa;
use crate::mem::{frames, MemError};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use mm::aspace::PinError;
use mm::backend::source::FrameSource;
use mm::base::addr::Pfn;
use mm::frame::buddy::{AllocError, FreeError, MigrateType};
use mm::frame::meta::FrameTable;
use mm::frame::node::NodeId;
use spin::{Mutex, Once};

/// Faults injected into the allocations that go through [`KernelFrames`]; allocations
/// are counted only while something is armed.
struct Injection {
    armed: AtomicBool,
    count: AtomicUsize,
    fail_at: AtomicUsize,
    pin_at: Mutex<Option<(usize, Pfn)>>,
    pinned: Mutex<Option<Result<Pfn, PinError>>>,
}

/// The kernel's frames, as the memory manager sees them.
pub struct KernelFrames {
    /// The frame table, looked up once (the allocator's lock need not be taken for it).
    table: Once<FrameTable<'static>>,
    inject: Injection,
}

impl Default for KernelFrames {
    fn default() -> Self {
        KernelFrames::new()
    }
}

impl KernelFrames {
    /// Nothing injected.
    pub const fn new() -> KernelFrames {
        KernelFrames {
            table: Once::new(),
            inject: Injection {
                armed: AtomicBool::new(false),
                count: AtomicUsize::new(0),
                fail_at: AtomicUsize::new(usize::MAX),
                pin_at: Mutex::new(None),
                pinned: Mutex::new(None),
            },
        }
    }

    /// Make the `n`-th allocation from now (0: the next one) fail with `OutOfMemory`.
    pub fn fail_nth(&self, n: usize) {
        self.arm();
        let now = self.inject.count.load(Ordering::Acquire);
        self.inject.fail_at.store(now + n, Ordering::Release);
    }

    /// Pin `pfn` (through the memory manager) just before the `n`-th allocation from now.
    /// That allocation must not be made under the reverse-map lock (migration
    /// destinations and fault frames are allocated outside it).
    pub fn pin_at_nth(&self, n: usize, pfn: Pfn) {
        self.arm();
        let now = self.inject.count.load(Ordering::Acquire);
        *self.lock(&self.inject.pin_at) = Some((now + n, pfn));
    }

    /// What the injected pin returned, once it happened.
    pub fn injected_pin(&self) -> Option<Result<Pfn, PinError>> {
        *self.lock(&self.inject.pinned)
    }

    /// Stop injecting; returns the allocations counted since the first arming.
    pub fn disarm(&self) -> usize {
        self.inject.armed.store(false, Ordering::Release);
        self.inject.fail_at.store(usize::MAX, Ordering::Release);
        *self.lock(&self.inject.pin_at) = None;
        *self.lock(&self.inject.pinned) = None;
        self.inject.count.swap(0, Ordering::AcqRel)
    }

    fn arm(&self) {
        self.inject.armed.store(true, Ordering::Release);
    }

    fn lock<'a, T>(&self, m: &'a Mutex<T>) -> spin::MutexGuard<'a, T> {
        crate::tlb::lock_serving(m)
    }

    /// Count an allocation while armed; whether it must fail.
    fn injected_failure(&self) -> bool {
        if !self.inject.armed.load(Ordering::Acquire) {
            return false;
        }
        let n = self.inject.count.fetch_add(1, Ordering::AcqRel);
        let pin = {
            let mut at = self.lock(&self.inject.pin_at);
            match *at {
                Some((when, pfn)) if when == n => at.take().map(|_| pfn),
                _ => None,
            }
        };
        if let (Some(pfn), Some(mm)) = (pin, super::mm()) {
            let result = mm.pin(pfn);
            *self.lock(&self.inject.pinned) = Some(result);
        }
        n == self.inject.fail_at.load(Ordering::Acquire)
    }
}

fn alloc_error(e: MemError) -> AllocError {
    match e {
        MemError::Alloc(e) => e,
        _ => AllocError::OutOfMemory,
    }
}

fn free_error(e: MemError) -> FreeError {
    match e {
        MemError::Free(e) => e,
        _ => FreeError::NotAllocated,
    }
}

impl FrameSource for KernelFrames {
    fn alloc(&self, order: u8, mt: MigrateType, node: Option<NodeId>) -> Result<Pfn, AllocError> {
        if self.injected_failure() {
            return Err(AllocError::OutOfMemory);
        }
        match node {
            None => frames::alloc(order, mt).map_err(alloc_error),
            Some(node) => numa::alloc_on(node, order, mt),
        }
    }

    fn alloc_at(&self, pfn: Pfn, order: u8, mt: MigrateType) -> Result<Pfn, AllocError> {
        if self.injected_failure() {
            return Err(AllocError::OutOfMemory);
        }
        frames::alloc_at(pfn, order, mt).map_err(alloc_error)
    }

    fn free(&self, pfn: Pfn, order: u8) -> Result<(), FreeError> {
        frames::free(pfn.addr(), order).map_err(free_error)
    }

    fn frame_table(&self) -> FrameTable<'_> {
        *self.table.call_once(frames::table)
    }

    fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        numa::node_of(pfn)
    }

    fn node_exists(&self, node: NodeId) -> bool {
        numa::node_exists(node)
    }
}
