//! Layer 6, the operations on address spaces: page faults ([`fault`]), the move engine
//! (`engine`) and its error ([`error`]), migration ([`migrate`]), moving a range to a NUMA
//! node ([`numa`]) and the pure parts of contiguity generation ([`contig`]). Imports every
//! layer below; nothing below imports it.

pub mod contig;
pub(crate) mod engine;
pub mod error;
pub mod fault;
pub mod migrate;
pub mod numa;
