//! Layer 1, physical frames: per-frame metadata ([`meta`]), compound blocks fused and
//! split in place ([`compound`]), the buddy allocator
//! ([`buddy`]) and the NUMA node map ([`node`]). Imports only [`crate::base`].

pub mod buddy;
pub mod compound;
pub mod meta;
pub mod node;
pub mod refs;
