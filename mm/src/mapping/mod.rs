//! Layer 4, the structures over page tables: VMAs ([`vma`]), the reverse map and frame
//! ownership ([`rmap`]), shared anonymous regions ([`region`]), and the physical windows
//! claimed by anchored VMAs ([`claims`]). Imports the layers below (base, frame, backend,
//! paging) only.

pub mod claims;
pub mod region;
pub mod rmap;
pub mod vma;
