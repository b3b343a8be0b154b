//! Contiguity generation, the pure parts: measuring how contiguous a VMA's frames are
//! ([`stats`]).

pub mod stats;
