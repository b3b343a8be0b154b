//! Layer 1, physical frames: per-frame metadata ([`meta`]), the buddy allocator
//! ([`buddy`]) and the NUMA node map ([`node`]). Imports only [`crate::base`].

pub mod buddy;
pub mod meta;
pub mod node;
pub mod refs;
