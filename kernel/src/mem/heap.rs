//! The kernel heap: `linked_list_allocator` over a virtual range at
//! [`HEAP_BASE`](super::kernel_space::HEAP_BASE) backed by frames from the buddy allocator.
//! When an allocation does not fit, the heap maps more frames at its top and retries.
//!
//! Lock order: heap, then frame allocator, then kernel page tables; neither of the
//! latter two allocates from the heap.

use super::kernel_space::{self, KernelTableAlloc, HEAP_BASE, HEAP_MAX};
use super::{frames, MemError};
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use linked_list_allocator::Heap;
use mm::base::addr::{PageSize, PAGE_SIZE};
use mm::frame::buddy::MigrateType;
use spin::Mutex;
use x86_64::structures::paging::PageTableFlags as F;

/// Growth step: one 2 MiB block when the allocator has one.
pub(super) const CHUNK: u64 = 2 << 20;

struct KernelHeap {
    heap: Mutex<Option<Heap>>,
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap {
    heap: Mutex::new(None),
};

/// Map `[va, va + CHUNK)` with fresh frames: one 2 MiB leaf if a 2 MiB block is free,
/// otherwise 512 single frames. All or nothing: when a frame or a table runs out half
/// way, what was mapped is unmapped and freed again.
pub(super) fn back_chunk(va: u64) -> Result<(), MemError> {
    let flags = F::WRITABLE | F::NO_EXECUTE | F::GLOBAL;
    if let Ok(pfn) =
        frames::with_buddy(|b| b.alloc(PageSize::Size2M.order(), MigrateType::Unmovable))
    {
        let mapped = kernel_space::with_kernel(|pt, flush| {
            pt.map(
                va,
                pfn.addr(),
                PageSize::Size2M,
                flags,
                &mut KernelTableAlloc,
                flush,
            )
        });
        if let Err(e) = mapped {
            frames::free(pfn.addr(), PageSize::Size2M.order())?;
            return Err(MemError::Map(e));
        }
        return Ok(());
    }
    for i in 0..CHUNK / PAGE_SIZE {
        let mapped = frames::alloc_zeroed(0, MigrateType::Unmovable).and_then(|frame| {
            kernel_space::with_kernel(|pt, flush| {
                pt.map(
                    va + i * PAGE_SIZE,
                    frame,
                    PageSize::Size4K,
                    flags,
                    &mut KernelTableAlloc,
                    flush,
                )
            })
            .map_err(|e| {
                if let Err(free) = frames::free(frame, 0) {
                    log::error!("heap: returning frame {frame:?} failed: {free:?}");
                }
                MemError::Map(e)
            })
        });
        if let Err(e) = mapped {
            release(va, i * PAGE_SIZE)?;
            return Err(e);
        }
    }
    Ok(())
}

/// Unmap `[va, va + len)` (mapped by [`back_chunk`]) and free its frames.
pub(super) fn release(va: u64, len: u64) -> Result<(), MemError> {
    let mut at = va;
    while at < va + len {
        let leaf = kernel_space::with_kernel(|pt, flush| {
            let size = pt.query(at)?.size;
            pt.unmap(at, size, flush).ok()
        });
        match leaf {
            Some(leaf) => {
                frames::free(leaf.pa, leaf.size.order())?;
                at += leaf.size.bytes();
            }
            None => at += PAGE_SIZE,
        }
    }
    Ok(())
}

/// Give the heap its first chunk.
pub fn init() -> Result<(), MemError> {
    back_chunk(HEAP_BASE)?;
    let mut heap = Heap::empty();
    // SAFETY: [HEAP_BASE, HEAP_BASE + CHUNK) was just mapped writable, is used by
    // nothing else, and stays mapped for the kernel's life.
    unsafe { heap.init(HEAP_BASE as *mut u8, CHUNK as usize) };
    *HEAP.heap.lock() = Some(heap);
    Ok(())
}

/// Bytes the heap currently spans and bytes in use.
pub fn usage() -> (usize, usize) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        crate::arch::tlb::lock_serving(&HEAP.heap)
            .as_ref()
            .map_or((0, 0), |h| (h.size(), h.used()))
    })
}

/// Grow `heap` (whose range ends at `limit`) by at least `at_least` bytes, mapping
/// chunks above its top with `back`. A chunk that fails ends the growth, but the chunks
/// mapped before it are added: the heap stays usable, and its top stays where the next
/// growth will map.
pub(super) fn grow_with(
    heap: &mut Heap,
    at_least: usize,
    limit: u64,
    mut back: impl FnMut(u64) -> Result<(), MemError>,
) -> Result<(), MemError> {
    let top = heap.top() as u64;
    let want = (at_least as u64 + PAGE_SIZE).next_multiple_of(CHUNK);
    if top + want > limit {
        return Err(MemError::HeapExhausted);
    }
    let mut done = 0;
    let mut result = Ok(());
    while done < want {
        if let Err(e) = back(top + done) {
            result = Err(e);
            break;
        }
        done += CHUNK;
    }
    if done > 0 {
        // SAFETY: the `done` bytes just above the heap's top were mapped writable by
        // `back` and belong to the heap's reserved virtual range, which nothing else uses.
        unsafe { heap.extend(done as usize) };
    }
    result
}

// SAFETY: every block handed out comes from the linked-list heap under its lock; the heap
// only spans mapped memory (init and grow map before adding).
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        x86_64::instructions::interrupts::without_interrupts(|| {
            // Growing maps kernel pages and shoots them down while holding the lock:
            // waiting for it must serve shootdowns, interrupts being off.
            let mut guard = crate::arch::tlb::lock_serving(&self.heap);
            let Some(heap) = guard.as_mut() else {
                return core::ptr::null_mut();
            };
            if let Ok(p) = heap.allocate_first_fit(layout) {
                return p.as_ptr();
            }
            // A growth that fails half way still adds what it mapped: try it anyway.
            let limit = HEAP_BASE + HEAP_MAX;
            if let Err(e) = grow_with(heap, layout.size() + layout.align(), limit, back_chunk) {
                log::warn!("heap: growing by {} bytes failed: {e:?}", layout.size());
            }
            heap.allocate_first_fit(layout)
                .map_or(core::ptr::null_mut(), NonNull::as_ptr)
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        x86_64::instructions::interrupts::without_interrupts(|| {
            let mut guard = crate::arch::tlb::lock_serving(&self.heap);
            if let (Some(heap), Some(ptr)) = (guard.as_mut(), NonNull::new(ptr)) {
                // SAFETY: the caller (GlobalAlloc contract) passes a block this heap
                // allocated with this layout.
                unsafe { heap.deallocate(ptr, layout) }
            }
        })
    }
}
