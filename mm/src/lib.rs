//! The memory-management library of the kernel: frame metadata, the buddy allocator and
//! our own 4-level page tables.
//!
//! It is `no_std` and knows nothing about the machine it runs on: physical memory is
//! reached through [`phys::PhysMem`] and TLB invalidations go to a [`flush::FlushSink`].
//! The kernel implements both on real hardware; host tests implement them over a
//! Vec-backed arena (feature `std`) with the real x86_64 entry bit layouts.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod addr;
pub mod aspace;
pub mod buddy;
pub mod cpuset;
pub mod fault;
pub mod flush;
pub mod frame;
pub mod migrate;
pub mod numa;
pub mod paging;
pub mod phys;
pub mod rmap;
pub mod shootdown;
pub mod vma;
