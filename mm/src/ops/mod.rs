//! Layer 6, the operations on address spaces: page faults ([`fault`]), migration
//! ([`migrate`]) and moving a range to a NUMA node ([`numa`]). Imports every layer below;
//! nothing below imports it.

pub mod fault;
pub mod migrate;
pub mod numa;
