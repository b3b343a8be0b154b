//! In-kernel tests of address spaces on the machine: real page tables loaded in CR3 on
//! several CPUs, real shootdown IPIs, the real frame allocator and NUMA map.
//!
//! Tests touch user memory from kernel mode with the address space loaded on the CPU,
//! through the fault probes ([`probe::read_u64`], [`probe::write_u64`]): a fault the
//! address space resolves (demand-zero, a migration entry) is retried transparently, one
//! it cannot resolve makes the probe report failure instead of ending the run.

use super::{activate, deactivate, KernelMm, Space};
use crate::arch::probe;
use crate::harness::{KernelTest, TestError, TestResult};
use crate::mem::{frames, pcp};
use crate::{check, check_eq};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use mm::backend::source::FrameSource;
use mm::base::addr::{PageSize, Pfn};
use mm::mapping::region::SharedRegion;
use mm::mapping::vma::{HugePolicy, SharedBacking, VmaFlags};
use mm::paging::Translation;
use x86_64::VirtAddr;

mod bad_contig;
mod bad_exchange;
mod bad_input;
mod contig;
mod contig_1g;
mod contig_races;
mod contig_scenario;
mod exchange;
mod faults;
mod full_claims;
pub mod huge;
mod migration;
mod numa;
mod physmap;
mod races;
mod writers;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// Where test mappings start in the user half (1 GiB aligned).
const BASE: u64 = 0x0000_1000_0000_0000;
/// Order of a 1 GiB block.
const ORDER_1G: u8 = 18;

/// The tests of this module.
pub const TESTS: &[KernelTest] = &[
    KernelTest {
        name: "vm::demand_zero_faults_4k_2m_1g_on_every_cpu",
        run: faults::demand_zero_faults,
    },
    KernelTest {
        name: "vm::shared_region_in_two_spaces_maps_one_frame",
        run: faults::shared_region,
    },
    KernelTest {
        name: "vm::writers_on_3_cpus_vs_migrator_100k_migrations",
        run: migration::writers_vs_migrator,
    },
    KernelTest {
        name: "vm::migrate_batch_with_injected_failures_reports_each_page",
        run: migration::injected_failures,
    },
    KernelTest {
        name: "vm::bad_input_is_typed_and_changes_nothing",
        run: bad_input::bad_input,
    },
    KernelTest {
        name: "vm::race_migrate_vs_unmap_on_another_cpu",
        run: races::migrate_vs_unmap,
    },
    KernelTest {
        name: "vm::race_migrate_vs_protect_on_another_cpu",
        run: races::migrate_vs_protect,
    },
    KernelTest {
        name: "vm::race_migrate_vs_space_destroy_on_another_cpu",
        run: races::migrate_vs_destroy,
    },
    KernelTest {
        name: "vm::race_migrate_vs_pin_unpin_during_batches",
        run: races::migrate_vs_pin,
    },
    KernelTest {
        name: "vm::race_two_cpus_migrate_the_same_blocks",
        run: races::two_migrators,
    },
    KernelTest {
        name: "vm::race_double_free_across_cpus_through_frame_caches",
        run: races::double_free_across_cpus,
    },
    KernelTest {
        name: "vm::numa_move_range_to_node_keeps_huge_pages",
        run: numa::numa_move,
    },
    KernelTest {
        name: "vm::physmap_classifies_vma_pinned_and_free_frames",
        run: physmap::classifies_frames,
    },
    KernelTest {
        name: "vm::exchange_under_writers_on_3_cpus_4k_2m_1g",
        run: exchange::exchange_under_writers,
    },
    KernelTest {
        name: "vm::exchange_bad_input_is_typed_and_changes_nothing",
        run: bad_exchange::bad_exchange,
    },
    KernelTest {
        name: "vm::contig_under_writers_tight_memory_4k_2m_by_exchange",
        run: contig::contig_under_writers,
    },
    KernelTest {
        name: "vm::contig_under_writers_moves_a_1g_block",
        run: contig_1g::contig_under_writers_1g,
    },
    KernelTest {
        name: "vm::contig_vs_unmap_protect_on_another_cpu",
        run: contig_races::contig_vs_unmap_protect,
    },
    KernelTest {
        name: "vm::contig_bad_input_is_typed_and_changes_nothing",
        run: bad_contig::bad_contig,
    },
    KernelTest {
        name: "vm::contig_full_range_tree_is_no_room_and_changes_nothing",
        run: full_claims::full_range_tree,
    },
    KernelTest {
        name: "vm::contig_scenario_4g_4cpu_seed_1",
        run: contig_scenario::seed_1,
    },
    KernelTest {
        name: "vm::contig_scenario_4g_4cpu_seed_2",
        run: contig_scenario::seed_2,
    },
    KernelTest {
        name: "vm::contig_scenario_4g_4cpu_seed_7",
        run: contig_scenario::seed_7,
    },
    KernelTest {
        name: "vm::contig_scenario_4g_4cpu_run_seed",
        run: contig_scenario::run_seed,
    },
    KernelTest {
        name: "vm::contig_scenario_4g_4cpu_huge",
        run: contig_scenario::huge,
    },
    KernelTest {
        name: "vm::contig_scenario_4g_4cpu_huge_gigabyte_leaf",
        run: contig_scenario::huge_gigabyte_leaf,
    },
    KernelTest {
        name: "vm::contig_scenario_smaller_machine",
        run: contig_scenario::smaller_machine,
    },
];

fn fail(message: String) -> TestError {
    TestError::Check {
        message,
        file: file!(),
        line: line!(),
    }
}

fn need_mm() -> Result<&'static KernelMm, TestError> {
    super::mm().ok_or_else(|| fail("address spaces are not set up".into()))
}

/// Free frames, those in the per-CPU caches included.
fn available() -> usize {
    frames::with_buddy(|b| b.free_frames()) + pcp::cached()
}

/// Free 1 GiB blocks in the allocator now.
fn free_1g_blocks() -> usize {
    frames::with_buddy(|b| b.free_areas()[ORDER_1G as usize])
}

fn read(va: u64) -> Option<u64> {
    probe::read_u64(va)
}

fn write(va: u64, value: u64) -> bool {
    // SAFETY: tests only write user addresses of their own VMAs (or addresses where the
    // write must fault), in the address space loaded on this CPU.
    unsafe { probe::write_u64(va, value) }
}

/// The block mapped at `va` in `space`: its head and the size of the leaf.
fn block_at(space: &Space, va: u64) -> Option<(Pfn, Translation)> {
    let t = space.translate(va)?;
    let head = super::frames()
        .frame_table()
        .head_of(Pfn::containing(t.leaf_base_pa))?;
    Some((head, t))
}

/// A hashed test value, never zero.
fn value(id: u64, generation: u64, word: u64) -> u64 {
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ generation.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ word.wrapping_mul(0x1656_67B1_9E37_79F9);
    x ^= x >> 31;
    x | 1
}

fn private(huge: HugePolicy) -> VmaFlags {
    VmaFlags::private(huge, true)
}

fn shared(region: &Arc<SharedRegion>, huge: HugePolicy) -> VmaFlags {
    VmaFlags {
        shared: Some(SharedBacking {
            region: region.clone(),
            offset: 0,
        }),
        ..private(huge)
    }
}

/// The address spaces and shared regions of a test, torn down in order at the end (or
/// when a check fails): unloaded, destroyed, regions released.
struct Env {
    mm: &'static KernelMm,
    spaces: Vec<Arc<Space>>,
    regions: Vec<Arc<SharedRegion>>,
}

impl Env {
    fn new() -> Result<Env, TestError> {
        Ok(Env {
            mm: need_mm()?,
            spaces: Vec::new(),
            regions: Vec::new(),
        })
    }

    fn space(&mut self) -> Result<Arc<Space>, TestError> {
        let space = self
            .mm
            .new_space()
            .map_err(|e| fail(format!("new_space: {e}")))?;
        self.spaces.push(space.clone());
        Ok(space)
    }

    fn region(&mut self, len: u64) -> Result<Arc<SharedRegion>, TestError> {
        let region = SharedRegion::new(len).map_err(|e| fail(format!("region: {e}")))?;
        self.regions.push(region.clone());
        Ok(region)
    }

    fn map(&self, space: &Space, start: u64, len: u64, flags: VmaFlags) -> TestResult {
        self.mm
            .map_anon(space, start, len, flags)
            .map_err(|e| fail(format!("map_anon({start:#x}, {len:#x}): {e}")))
    }

    fn populate(&self, space: &Space, start: u64, len: u64) -> TestResult {
        self.mm
            .populate(space, start, len)
            .map_err(|e| fail(format!("populate({start:#x}, {len:#x}): {e}")))
    }

    /// Destroy every space and release every region, checking each step (the test must
    /// have dropped its own handles on the regions).
    fn teardown(mut self) -> TestResult {
        deactivate();
        for space in core::mem::take(&mut self.spaces) {
            let r = self.mm.destroy_space(&space);
            check_eq!(r, Ok(()));
        }
        for region in core::mem::take(&mut self.regions) {
            let r = self.mm.release_region(&region);
            check!(r.is_ok(), "release_region: {r:?}");
        }
        Ok(())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        deactivate();
        for space in &self.spaces {
            // A failed test may leave a space loaded on another CPU: it is then kept.
            let _ = self.mm.destroy_space(space);
        }
        for region in &self.regions {
            let _ = self.mm.release_region(region);
        }
    }
}

/// Both audits: the reverse map against every page table, then the allocator.
fn audits(mm: &KernelMm) -> TestResult {
    let rmap = mm.rmap_audit();
    check!(rmap.is_ok(), "reverse-map audit: {rmap:?}");
    let buddy = frames::drain_and_audit();
    check!(buddy.is_ok(), "allocator audit: {buddy:?}");
    Ok(())
}

/// Fill the probe words of the block at `va` (of `size`) with values of `seed`.
fn fill(va: u64, size: PageSize, seed: u64) -> bool {
    probes(size).all(|o| write(va + o, value(seed, o, 3)))
}

fn intact(va: u64, size: PageSize, seed: u64) -> bool {
    probes(size).all(|o| read(va + o) == Some(value(seed, o, 3)))
}

/// Where [`tag`] writes in each 4 KiB page: the first and the last word, clear of the
/// writers' slots (words 1 to 3 of each 512-byte chunk).
const TAG_WORDS: [u64; 2] = [0, K4 - 8];

/// Tag the 4 KiB pages of `[va, va + len)` with values of `seed` (every page up to
/// 2 MiB, every 64th page beyond, so a 1 GiB page costs 4096 pages of probes).
fn tag(va: u64, len: u64, seed: u64) -> bool {
    tag_pages(va, len).all(|p| TAG_WORDS.iter().all(|&o| write(p + o, value(seed, p, o))))
}

/// Whether [`tag`]'s words still hold their values.
fn tagged(va: u64, len: u64, seed: u64) -> bool {
    tag_pages(va, len).all(|p| {
        TAG_WORDS
            .iter()
            .all(|&o| read(p + o) == Some(value(seed, p, o)))
    })
}

fn tag_pages(va: u64, len: u64) -> impl Iterator<Item = u64> {
    let stride = if len > M2 { 64 * K4 } else { K4 };
    (va..va + len).step_by(stride as usize)
}

fn probes(size: PageSize) -> impl Iterator<Item = u64> {
    let b = size.bytes();
    [0, 8, K4 - 8, b / 2, b - 8]
        .into_iter()
        .filter(move |&o| o < b)
}

/// What a refused operation must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    vmas: Vec<(u64, u64, bool)>,
    leaves: Vec<(VirtAddr, Translation)>,
    free: usize,
    rmap: usize,
}

fn snapshot(space: &Space, heads: &[Pfn]) -> Snapshot {
    let mm = super::mm();
    Snapshot {
        vmas: space
            .vmas()
            .iter()
            .map(|v| (v.start, v.end, v.flags.writable))
            .collect(),
        leaves: space.leaves(),
        free: available(),
        rmap: heads
            .iter()
            .map(|&h| mm.map_or(0, |m| m.rmap_of(h).len()))
            .sum(),
    }
}
