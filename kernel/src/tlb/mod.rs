//! TLB shootdown on real (emulated) CPUs, above memory: its in-kernel tests and
//! benchmarks. The mailbox, the IPI handler and local invalidation sit below memory in
//! [`arch::tlb`](crate::arch::tlb); the flush sink of kernel page-table changes sits in
//! [`mem::kernel_flush`](crate::mem::kernel_flush).

pub mod bench;
pub mod tests;
