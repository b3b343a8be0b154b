//! In-kernel tests of huge pages in place: promotion, split and collapse at 2 MiB and
//! 1 GiB under writers on other CPUs, stale translations after each, the round trip,
//! bad input and races, and the background daemon.
//!
//! A test that cannot check what it claims here skips, saying why: fewer CPUs than it
//! needs, no 1 GiB pages (CPUID without `pdpe1gb`), or fewer free 1 GiB blocks than it
//! uses. Tests whose name ends in `_1g` are the ones that need 1 GiB blocks.

mod bad_input;
mod daemon;
mod races;
mod roundtrip;
mod stale;
mod writers;

use super::{fail, free_1g_blocks, private, Env, Space};
use crate::arch::percpu;
use crate::harness::{KernelTest, TestError};
use crate::skip;
use alloc::format;
use alloc::vec::Vec;
use mm::base::addr::{PageSize, PAGE_SIZE};
use mm::mapping::vma::HugePolicy;

/// The tests of this module.
pub const TESTS: &[KernelTest] = &[
    KernelTest {
        name: "vm::huge_writers_on_3_cpus_vs_promote_split_collapse_2m",
        run: writers::writers_2m,
    },
    KernelTest {
        name: "vm::huge_writers_on_3_cpus_vs_promote_split_collapse_1g",
        run: writers::writers_1g,
    },
    KernelTest {
        name: "vm::huge_no_stale_4k_translation_after_promotion_2m",
        run: stale::after_promotion_2m,
    },
    KernelTest {
        name: "vm::huge_no_stale_2m_translation_after_split_2m",
        run: stale::after_split_2m,
    },
    KernelTest {
        name: "vm::huge_no_stale_2m_translation_after_promotion_1g",
        run: stale::after_promotion_1g,
    },
    KernelTest {
        name: "vm::huge_no_stale_1g_translation_after_split_1g",
        run: stale::after_split_1g,
    },
    KernelTest {
        name: "vm::huge_split_then_promote_returns_to_the_same_mapping_2m",
        run: roundtrip::same_mapping_2m,
    },
    KernelTest {
        name: "vm::huge_split_then_promote_returns_to_the_same_mapping_1g",
        run: roundtrip::same_mapping_1g,
    },
    KernelTest {
        name: "vm::huge_bad_collapse_input_is_typed_and_changes_nothing",
        run: bad_input::bad_collapse,
    },
    KernelTest {
        name: "vm::huge_race_promote_split_vs_unmap_on_another_cpu",
        run: races::promote_vs_unmap,
    },
    KernelTest {
        name: "vm::huge_race_promote_split_vs_protect_on_another_cpu",
        run: races::promote_vs_protect,
    },
    KernelTest {
        name: "vm::huge_daemon_makes_always_vmas_huge_under_writers",
        run: daemon::daemon_under_writers,
    },
];

/// Free frames plus the frames the kernel heap spans. Contiguity generation (collapse in
/// place, the daemon) snapshots the frame table on the heap, which may grow the heap for
/// good the first time; counting its frames keeps a leak, and only a leak, visible.
fn accounted() -> usize {
    super::available() + crate::mem::heap::usage().0 / PAGE_SIZE as usize
}

/// Every online CPU but this one, at least `n` of them (else the test skips: `why`).
fn other_cpus(n: usize, why: &str) -> Result<Vec<u32>, TestError> {
    let me = percpu::cpu_index();
    let others: Vec<u32> = percpu::online().iter().filter(|&c| c != me).collect();
    if others.len() < n {
        skip!("needs {} CPUs ({why}); {} online", n + 1, others.len() + 1);
    }
    Ok(others)
}

/// Skip unless 1 GiB leaves are allowed and `blocks` 1 GiB blocks are free.
fn need_1g(blocks: usize) -> Result<(), TestError> {
    let mm = super::need_mm()?;
    if mm.max_leaf() < PageSize::Size1G {
        skip!("no 1 GiB pages: the CPU does not list them (CPUID pdpe1gb)");
    }
    let free = free_1g_blocks();
    if free < blocks {
        skip!("needs {blocks} free 1 GiB blocks, the allocator has {free}");
    }
    Ok(())
}

/// The leaf mapping `va` in `space`: its size and the physical address of its first byte.
fn leaf(space: &Space, va: u64) -> Option<(PageSize, u64)> {
    space
        .translate(va)
        .map(|t| (t.size, t.leaf_base_pa.as_u64()))
}

/// Map `[va, va + size)` in `space` on request and populate it: one leaf of `size`
/// (refused if the allocator had no free block of that size); its physical base.
fn huge_page(env: &Env, space: &Space, va: u64, size: PageSize) -> Result<u64, TestError> {
    env.map(space, va, size.bytes(), private(HugePolicy::OnRequest))?;
    env.populate(space, va, size.bytes())?;
    match leaf(space, va) {
        Some((s, pa)) if s == size => Ok(pa),
        other => Err(fail(format!(
            "{va:#x}: populated as {other:?}, expected one {size:?} leaf"
        ))),
    }
}

/// [`huge_page`], then split once: 512 contiguous, aligned leaves of the next size down.
fn split_page(env: &Env, space: &Space, va: u64, size: PageSize) -> Result<u64, TestError> {
    let pa = huge_page(env, space, va, size)?;
    match env.mm.split_huge(space, va) {
        Ok(child) if Some(child) == size.smaller() => Ok(pa),
        other => Err(fail(format!("split_huge({va:#x}): {other:?}"))),
    }
}
