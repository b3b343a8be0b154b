//! Contiguity generation, the pure parts: choosing the physical window a VMA is anchored
//! to ([`anchor`]: its page at virtual page `vpn` belongs at frame `pfn_start + (vpn -
//! vpn_start)`) and measuring how contiguous a VMA's frames are ([`stats`]).

pub mod anchor;
pub mod stats;
