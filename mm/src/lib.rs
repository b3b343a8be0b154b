//! The memory-management library of the kernel: frame metadata, the buddy allocator, our
//! own 4-level page tables, address spaces with VMAs and an exact reverse map, and the
//! operations on them (page faults, whole-huge-page migration, NUMA placement).
//!
//! It is `no_std` and knows nothing about the machine it runs on: physical memory is
//! reached through [`backend::phys::PhysMem`], TLB invalidations go to a
//! [`backend::flush::FlushSink`], frames come from a [`backend::source::FrameSource`] and
//! shootdowns go to a [`backend::tlb::TlbShootdown`]. The kernel implements them on real
//! hardware; host tests implement them over a Vec-backed arena (feature `std`) with the
//! real x86_64 entry bit layouts.
//!
//! # Layers
//!
//! Each layer imports only the layers above it in this list (a host test,
//! `mm/tests/layers.rs`, fails when an import goes the other way):
//!
//! 0. [`base`]: addresses, page sizes, frame numbers, CPU sets;
//! 1. [`frame`]: frame metadata, the buddy allocator, the NUMA node map;
//! 2. [`backend`]: the traits the kernel implements, and the shootdown protocol;
//! 3. [`paging`]: page tables;
//! 4. [`mapping`]: VMAs, the reverse map, shared regions, claimed physical windows;
//! 5. [`aspace`]: address spaces and the memory manager [`aspace::Mm`];
//! 6. [`ops`]: faults, migration, exchange, NUMA moves, contiguity generation.
//!
//! `ARCHITECTURE.md` at the top of the repository describes the invariants, the lock
//! order and the protocols.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod aspace;
pub mod backend;
pub mod base;
pub mod frame;
pub mod mapping;
pub mod ops;
pub mod paging;
