//! Layer 4, the structures over page tables: VMAs ([`vma`]), the reverse map and frame
//! ownership ([`rmap`]), shared anonymous regions ([`region`]). Imports the layers below
//! (base, frame, backend, paging) only.

pub mod region;
pub mod rmap;
pub mod vma;
