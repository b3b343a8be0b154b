//! Layer 2, what the machine provides: the traits the kernel implements on hardware and
//! host tests implement over an emulated MMU: physical memory access ([`phys::PhysMem`]),
//! the TLB-flush sink of page-table changes ([`flush::FlushSink`]), frames
//! ([`source::FrameSource`]) and TLB shootdown ([`tlb::TlbShootdown`]), plus the
//! multi-CPU shootdown protocol a kernel builds its `TlbShootdown` on ([`shootdown`]).
//! Imports only [`crate::base`] and [`crate::frame`].

pub mod flush;
pub mod phys;
pub mod shootdown;
pub mod source;
pub mod tlb;
