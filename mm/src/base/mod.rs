//! Layer 0, identifiers and addresses: page sizes, frame numbers, CPU sets. Imports
//! nothing else of the crate.

pub mod addr;
pub mod cpuset;
