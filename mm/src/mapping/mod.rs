//! Layer 4, the structures over page tables: VMAs ([`vma`]), the reverse map and frame
//! ownership ([`rmap`]), shared anonymous regions ([`region`]), the anchors of VMAs
//! being made contiguous ([`anchor`]) and the physical range tree that keeps their
//! windows apart ([`claims`]). Imports the layers below (base, frame, backend, paging)
//! only.

pub mod anchor;
pub mod claims;
pub mod region;
pub mod rmap;
pub mod vma;
