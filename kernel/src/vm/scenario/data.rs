//! The scenario's data check: before contiguity generation every resident 4 KiB page of
//! a demo VMA gets a tag in its first word and the tag's checksum in its last (written
//! through the linear map at the frame the page maps); every background block gets the
//! same in its first and last word. Afterwards each page is read back through its virtual
//! address with its address space loaded on this CPU, so a page left behind, swapped
//! with another or copied wrongly shows up under its own address.

use super::plan::{Background, Kind, Plan, VmaPlan, K4, M2};
use crate::arch::probe;
use crate::mem::physmap::PHYS;
use crate::vm::{activate, deactivate, Space};
use alloc::sync::Arc;
use core::sync::atomic::Ordering;
use mm::backend::phys::PhysMem;
use x86_64::PhysAddr;

/// The key of the background's tags.
const BACKGROUND_KEY: u64 = 0x5a;

/// The tag of page `page` of the data keyed `key` (never zero, as a fresh page reads).
fn tag(seed: u64, key: u64, page: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ key.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ page.wrapping_mul(0x1656_67B1_9E37_79F9);
    x ^= x >> 29;
    x | 1
}

/// The checksum stored with a tag.
fn check_word(tag: u64) -> u64 {
    tag.rotate_left(17) ^ 0xA5A5_5A5A_F00D_CAFE
}

/// The key of a VMA's tags: the shared region's two mappings read the same data.
fn key(v: &VmaPlan) -> u64 {
    match v.kind {
        Kind::SharedSecond => 'E' as u64,
        _ => v.letter as u64,
    }
}

/// Where a page's first and last word live, and what goes there.
fn words(seed: u64, key: u64, page: u64, va: u64, bytes: u64) -> [(u64, u64); 2] {
    let t = tag(seed, key, page);
    [(va, t), (va + bytes - 8, check_word(t))]
}

fn store(space: &Space, va: u64, value: u64) -> bool {
    match space.translate(va) {
        Some(t) => {
            PHYS.word(PhysAddr::new(t.pa.as_u64()))
                .store(value, Ordering::Release);
            true
        }
        None => false,
    }
}

/// Tag every resident page of `v` in `space`; the address of the first page that is not
/// mapped, if any.
pub fn write_vma(seed: u64, space: &Space, v: &VmaPlan) -> Result<(), u64> {
    for page in v.resident.0..v.resident.1 {
        let va = v.start + page * K4;
        for (at, value) in words(seed, key(v), page, va, K4) {
            if !store(space, at, value) {
                return Err(at);
            }
        }
    }
    Ok(())
}

/// Tag background block `i` of `space`.
pub fn write_block(seed: u64, space: &Space, i: u64) -> Result<(), u64> {
    let va = Background::block_va(i);
    for (at, value) in words(seed, BACKGROUND_KEY, i, va, M2) {
        if !store(space, at, value) {
            return Err(at);
        }
    }
    Ok(())
}

/// Damage the first page of `v` (the demonstration's self-test of its own failure);
/// false if it is not mapped.
pub fn damage(seed: u64, space: &Space, v: &VmaPlan) -> bool {
    let va = v.start + v.resident.0 * K4;
    store(space, va, !tag(seed, key(v), v.resident.0))
}

/// Pages whose tags are wrong, and the first of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Damage {
    /// Pages (or background blocks) checked.
    pub checked: u64,
    /// Of which this many read back wrong (or faulted).
    pub bad: u64,
    /// The virtual address of the first, and the space's index.
    pub first: Option<(usize, u64)>,
}

impl Damage {
    fn saw(&mut self, ok: bool, space: usize, va: u64) {
        self.checked += 1;
        if !ok {
            self.bad += 1;
            self.first.get_or_insert((space, va));
        }
    }
}

fn intact(words: [(u64, u64); 2]) -> bool {
    words
        .iter()
        .all(|&(va, want)| probe::read_u64(va) == Some(want))
}

/// Read every tag back through the virtual addresses: the demo VMAs of each space with it
/// loaded here, then the background blocks that are still mapped (`live(i)`).
pub fn verify(
    plan: &Plan,
    spaces: &[Arc<Space>],
    background: &Arc<Space>,
    live: impl Fn(u64) -> bool,
) -> Damage {
    let mut d = Damage::default();
    for (s, space) in spaces.iter().enumerate() {
        if activate(space).is_err() {
            d.saw(false, s, 0);
            continue;
        }
        for v in plan.vmas.iter().filter(|v| v.space == s) {
            for page in v.resident.0..v.resident.1 {
                let va = v.start + page * K4;
                d.saw(intact(words(plan.seed, key(v), page, va, K4)), s, va);
            }
        }
    }
    if activate(background).is_ok() {
        for i in (0..plan.background.blocks).filter(|&i| live(i)) {
            let va = Background::block_va(i);
            d.saw(
                intact(words(plan.seed, BACKGROUND_KEY, i, va, M2)),
                spaces.len(),
                va,
            );
        }
    } else {
        d.saw(false, spaces.len(), 0);
    }
    deactivate();
    d
}
