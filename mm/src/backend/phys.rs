//! Access to physical memory, and the Vec-backed arena that stands in for it on the host.
//!
//! The kernel reaches all physical memory through a linear map; host tests reach an
//! arena whose physical address 0 is the start of a heap buffer. Both implement
//! [`PhysMem`], so the allocator and page-table code run unchanged on either.

use crate::base::addr::PAGE_SIZE;
use core::sync::atomic::AtomicU64;
use x86_64::PhysAddr;

/// A way to reach physical memory.
///
/// # Safety
/// `ptr(pa)` must return a pointer that is valid for reads and writes of the whole frame
/// containing `pa` (for as long as the implementor lives), 8-byte aligned when `pa` is,
/// and distinct frames must not alias.
pub unsafe trait PhysMem: Sync {
    /// A pointer through which the byte at `pa` can be read and written.
    fn ptr(&self, pa: PhysAddr) -> *mut u8;

    /// The 64-bit word at `pa` (8-byte aligned), for atomic access such as page-table
    /// entries, which the MMU updates concurrently (accessed/dirty bits).
    fn word(&self, pa: PhysAddr) -> &AtomicU64 {
        debug_assert!(pa.is_aligned(8u64));
        // SAFETY: by the trait's contract the pointer is valid for the whole frame and
        // 8-byte aligned; AtomicU64 has the layout of u64 and every access to it goes
        // through atomic operations.
        unsafe { &*(self.ptr(pa) as *const AtomicU64) }
    }

    /// Fill the frame at `pa` (frame aligned) with zeroes.
    fn zero_frame(&self, pa: PhysAddr) {
        // SAFETY: the frame is valid for writes of PAGE_SIZE bytes (trait contract).
        unsafe { core::ptr::write_bytes(self.ptr(pa), 0, PAGE_SIZE as usize) }
    }

    /// Copy the frame at `src` to the frame at `dst` (distinct, frame aligned).
    fn copy_frame(&self, dst: PhysAddr, src: PhysAddr) {
        debug_assert_ne!(dst, src);
        // SAFETY: both frames are valid for PAGE_SIZE bytes and distinct frames don't
        // alias (trait contract).
        unsafe { core::ptr::copy_nonoverlapping(self.ptr(src), self.ptr(dst), PAGE_SIZE as usize) }
    }
}

/// A heap buffer posing as `size` bytes of physical memory starting at physical address 0.
#[cfg(any(test, feature = "std"))]
pub struct Arena {
    words: std::boxed::Box<[AtomicU64]>,
}

#[cfg(any(test, feature = "std"))]
impl Arena {
    /// An arena of `frames` zeroed frames.
    pub fn new(frames: u64) -> Arena {
        let words = (0..frames * PAGE_SIZE / 8)
            .map(|_| AtomicU64::new(0))
            .collect();
        Arena { words }
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.words.len() as u64 * 8
    }

    /// Whether the arena has no memory at all.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}

// SAFETY: the buffer lives as long as the arena, is 8-byte aligned (AtomicU64 elements)
// and every physical address maps to its own byte of it; out-of-range addresses panic in
// the index below rather than alias.
#[cfg(any(test, feature = "std"))]
unsafe impl PhysMem for Arena {
    fn ptr(&self, pa: PhysAddr) -> *mut u8 {
        let offset = pa.as_u64();
        assert!(offset < self.len(), "arena access out of range: {pa:?}");
        // The pointer is derived from the whole buffer, so it may cover the whole frame;
        // AtomicU64 permits interior mutation, so writing through it is sound.
        (self.words.as_ptr() as *mut u8).wrapping_add(offset as usize)
    }
}
