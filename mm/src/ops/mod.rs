//! Layer 6, the operations on address spaces: page faults ([`fault`]), the move engine
//! (`engine`) and its error ([`error`]), migration ([`migrate`]), exchange of two in-use blocks ([`exchange`]), contiguity generation ([`contig`]), moving a range to a NUMA node ([`numa`]) and long-term pins ([`pin`]). Imports every layer below;
//! nothing below imports it.

pub mod contig;
pub(crate) mod engine;
pub mod error;
pub mod exchange;
pub mod fault;
pub mod huge;
pub mod migrate;
pub mod numa;
pub mod pin;
