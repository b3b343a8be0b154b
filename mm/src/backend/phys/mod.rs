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
/// The provided methods are sound for every input: `word` uses the aligned word that
/// contains `pa`, `zero_frame` and `copy_frame` the frames that contain their addresses,
/// and a copy of a frame onto itself does nothing.
///
/// # Safety
/// For every `pa`, `ptr(pa)` must either return a pointer valid for reads and writes of
/// the whole 4 KiB frame containing `pa`, for as long as the implementor lives (8-byte
/// aligned when `pa` is), or not return (an implementor that cannot reach `pa` panics:
/// only a corrupt page table or a kernel bug hands it such an address). Distinct frames
/// must not alias.
pub unsafe trait PhysMem: Sync {
    /// A pointer through which the byte at `pa` can be read and written.
    fn ptr(&self, pa: PhysAddr) -> *mut u8;

    /// The 64-bit word containing `pa` (the word at `pa` rounded down to 8 bytes), for
    /// atomic access such as page-table entries, which the MMU updates concurrently
    /// (accessed/dirty bits).
    fn word(&self, pa: PhysAddr) -> &AtomicU64 {
        let pa = pa.align_down(8u64);
        // SAFETY: by the trait's contract the pointer is valid for the whole frame, and
        // 8-byte aligned since `pa` now is; AtomicU64 has the layout of u64 and every
        // access to it goes through atomic operations.
        unsafe { &*(self.ptr(pa) as *const AtomicU64) }
    }

    /// Fill the frame containing `pa` with zeroes.
    fn zero_frame(&self, pa: PhysAddr) {
        let pa = pa.align_down(PAGE_SIZE);
        // SAFETY: the frame is valid for writes of PAGE_SIZE bytes from its start (trait
        // contract).
        unsafe { core::ptr::write_bytes(self.ptr(pa), 0, PAGE_SIZE as usize) }
    }

    /// Copy the frame containing `src` to the frame containing `dst`; nothing when they
    /// are the same frame.
    fn copy_frame(&self, dst: PhysAddr, src: PhysAddr) {
        let (dst, src) = (dst.align_down(PAGE_SIZE), src.align_down(PAGE_SIZE));
        if dst == src {
            return;
        }
        // SAFETY: both frames are valid for PAGE_SIZE bytes from their starts, and
        // distinct frames don't alias (trait contract).
        unsafe { core::ptr::copy_nonoverlapping(self.ptr(src), self.ptr(dst), PAGE_SIZE as usize) }
    }

    /// Exchange the contents of the frames containing `a` and `b`, `buf.len()` words at a
    /// time (at most one frame: [`SWAP_CHUNK_MAX`]) through `buf`; nothing when they are
    /// the same frame or `buf` is empty.
    fn swap_frame(&self, a: PhysAddr, b: PhysAddr, buf: &mut [u64]) {
        let (a, b) = (a.align_down(PAGE_SIZE), b.align_down(PAGE_SIZE));
        let chunk = (buf.len() * 8).min(SWAP_CHUNK_MAX);
        if a == b || chunk == 0 {
            return;
        }
        let (pa, pb, tmp) = (self.ptr(a), self.ptr(b), buf.as_mut_ptr() as *mut u8);
        let mut off = 0;
        while off < SWAP_CHUNK_MAX {
            let n = chunk.min(SWAP_CHUNK_MAX - off);
            // SAFETY: both frames are valid for PAGE_SIZE bytes from their starts and
            // distinct frames don't alias (trait contract), `off + n <= PAGE_SIZE`; `buf`
            // is a separate, exclusively borrowed buffer of at least `n` bytes.
            unsafe {
                core::ptr::copy_nonoverlapping(pa.add(off), tmp, n);
                core::ptr::copy_nonoverlapping(pb.add(off), pa.add(off), n);
                core::ptr::copy_nonoverlapping(tmp, pb.add(off), n);
            }
            off += n;
        }
    }

    /// Exchange the contents of the frames containing `a` and `b` a word of each at a
    /// time, through registers: every byte is read once and written once, where
    /// [`swap_frame`](Self::swap_frame) copies it three times (to its buffer, over, back).
    /// Nothing when they are the same frame.
    fn swap_frame_in_registers(&self, a: PhysAddr, b: PhysAddr) {
        let (a, b) = (a.align_down(PAGE_SIZE), b.align_down(PAGE_SIZE));
        if a == b {
            return;
        }
        let words = (PAGE_SIZE / 8) as usize;
        // SAFETY: both frames are valid for PAGE_SIZE bytes from their starts, 8-byte
        // aligned (frame starts), and distinct frames don't alias (trait contract).
        unsafe {
            core::ptr::swap_nonoverlapping(self.ptr(a) as *mut u64, self.ptr(b) as *mut u64, words)
        }
    }
}

/// Bytes the largest buffer of [`PhysMem::swap_frame`] swaps at a time: one frame.
pub const SWAP_CHUNK_MAX: usize = PAGE_SIZE as usize;

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
    #[inline]
    fn ptr(&self, pa: PhysAddr) -> *mut u8 {
        let offset = pa.as_u64();
        assert!(offset < self.len(), "arena access out of range: {pa:?}");
        // The pointer is derived from the whole buffer, so it may cover the whole frame;
        // AtomicU64 permits interior mutation, so writing through it is sound.
        (self.words.as_ptr() as *mut u8).wrapping_add(offset as usize)
    }
}

#[cfg(test)]
mod tests;
