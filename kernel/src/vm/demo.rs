//! The live part of the demonstration: a 2 MiB page migrated back and forth whole while
//! another CPU keeps writing to it, with the contents checked afterwards.
//!
//! The writer owns one word per 4 KiB of the page and writes a new value to each on
//! every pass, after checking that the word still holds the value it wrote on the pass
//! before: a write lost by a migration (made to the old copy after it was copied) shows
//! up as a stale value, at the next pass or in the final check.
//!
//! The picture of physical memory ([`physmap`]) is printed with the page as `A`, once
//! filled (phase `before`) and once migrated (phase `after`).

use super::{activate, deactivate, migration_waits, mm, physmap, Space};
use crate::arch::percpu;
use crate::arch::probe;
use crate::smp;
use crate::sprintln;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};
use mm::backend::source::FrameSource;
use mm::base::addr::{PageSize, Pfn};
use mm::mapping::vma::{HugePolicy, VmaFlags};
use mm::ops::migrate::Destination;

const VA: u64 = 0x4000_0000;
const LEN: u64 = 2 << 20;
const MIGRATIONS: usize = 16;
const WORDS: u64 = LEN / 8;

/// Words between two of the writer's words (one per 4 KiB).
const STRIDE: u64 = 512;

/// The value of word `i` after `generation` writer passes over it (0: the first fill).
fn pattern(i: u64, generation: u64) -> u64 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ generation.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)) | 1
}

/// What the writer did.
#[derive(Default)]
struct Written {
    /// Words written.
    writes: u64,
    /// Passes over its words completed (each word holds this generation).
    passes: u64,
    /// Words that did not hold the value written on the pass before.
    lost: u64,
    /// The first of them.
    first_lost: Option<String>,
}

/// Until `stop`: check each of the writer's words against the last pass, then write the
/// next generation.
fn write_passes(stop: &AtomicBool) -> Written {
    let mut w = Written::default();
    while !stop.load(Ordering::Acquire) {
        let g = w.passes + 1;
        for i in (0..WORDS).step_by(STRIDE as usize) {
            let va = VA + i * 8;
            let got = probe::read_u64(va);
            if got != Some(pattern(i, g - 1)) {
                w.lost += 1;
                w.first_lost.get_or_insert(alloc::format!(
                    "{va:#x} read {got:x?} after pass {}, expected {:#x}",
                    g - 1,
                    pattern(i, g - 1)
                ));
            }
            // SAFETY: the address lies in the demo's VMA, in the space this CPU loaded.
            if unsafe { probe::write_u64(va, pattern(i, g)) } {
                w.writes += 1;
            }
        }
        w.passes = g;
    }
    w
}

/// Run the demonstration and print what happened; corruption, a failed audit or any
/// error is returned. `corrupt` damages one word before the check (a self-test).
pub fn run(corrupt: bool) -> Result<(), String> {
    sprintln!("{}", demonstrate(corrupt)?);
    Ok(())
}

fn head_of(space: &Space) -> Option<(Pfn, PageSize)> {
    let t = space.translate(VA)?;
    let head = super::frames()
        .frame_table()
        .head_of(Pfn::containing(t.leaf_base_pa))?;
    Some((head, t.size))
}

/// Print the picture of physical memory with the demo's VMA as `A`.
fn picture(space: &Space, phase: &str) -> Result<(), String> {
    physmap::classify(&[('A', space, VA, VA + LEN)], phase)
        .map_err(|e| alloc::format!("physmap {phase}: {e}"))?
        .print();
    Ok(())
}

fn demonstrate(corrupt: bool) -> Result<String, String> {
    let mm = mm().ok_or("no memory manager")?;
    let space = mm.new_space().map_err(|e| alloc::format!("{e:?}"))?;
    let result = with_space(mm, &space, corrupt);
    deactivate();
    let unmapped = mm.unmap(&space, VA, LEN);
    let destroyed = mm.destroy_space(&space);
    let line = result?;
    unmapped.map_err(|e| alloc::format!("unmap: {e:?}"))?;
    destroyed.map_err(|e| alloc::format!("destroy: {e:?}"))?;
    Ok(line)
}

fn with_space(
    mm: &'static super::KernelMm,
    space: &Arc<Space>,
    corrupt: bool,
) -> Result<String, String> {
    mm.map_anon(space, VA, LEN, VmaFlags::private(HugePolicy::Always, true))
        .map_err(|e| alloc::format!("map: {e:?}"))?;
    // Fault the page in and fill it on this CPU.
    activate(space).map_err(|e| alloc::format!("activate: {e:?}"))?;
    for i in 0..WORDS {
        // SAFETY: the address lies in the VMA just mapped in the space loaded here.
        if !unsafe { probe::write_u64(VA + i * 8, pattern(i, 0)) } {
            return Err(alloc::format!("write at {:#x} faulted", VA + i * 8));
        }
    }
    let (first, size) = head_of(space).ok_or("page not mapped")?;
    picture(space, "before")?;
    // A writer on another CPU keeps writing new values to one word per 4 KiB.
    let writer_cpu = percpu::online().iter().find(|&c| c != percpu::cpu_index());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = match writer_cpu {
        Some(cpu) => {
            let (space, stop) = (space.clone(), stop.clone());
            let pending = smp::run_on(cpu, move || {
                if activate(&space).is_err() {
                    return None;
                }
                let written = write_passes(&stop);
                deactivate();
                Some(written)
            });
            pending.ok()
        }
        None => None,
    };
    let waits_before = migration_waits();
    let mut trail = alloc::vec![first.0];
    let migrated = (|| {
        for _ in 0..MIGRATIONS {
            let (head, _) = head_of(space).ok_or("page vanished")?;
            let new = mm
                .migrate_one(head, Destination::Any)
                .map_err(|e| alloc::format!("migration failed: {e:?}"))?;
            trail.push(new.0);
        }
        Ok::<(), String>(())
    })();
    // The writer stops whatever happened, before the space goes.
    stop.store(true, Ordering::Release);
    let written = writer.map(|w| w.wait());
    migrated?;
    picture(space, "after")?;
    let passes = match &written {
        Some(Some(w)) => w.passes,
        Some(None) => return Err(String::from("the writer could not load the space")),
        None => 0,
    };
    let want = |i: u64| pattern(i, if i.is_multiple_of(STRIDE) { passes } else { 0 });
    // SAFETY: as above; the self-test's deliberate damage, to the space loaded here.
    if corrupt && !unsafe { probe::write_u64(VA + 8, !want(1)) } {
        return Err(alloc::format!("write at {:#x} faulted", VA + 8));
    }
    let bad = (0..WORDS)
        .filter(|&i| probe::read_u64(VA + i * 8) != Some(want(i)))
        .count();
    let lost = written
        .as_ref()
        .and_then(Option::as_ref)
        .map_or(0, |w| w.lost);
    let intact = bad == 0 && lost == 0;
    let (last, last_size) = head_of(space).ok_or("page vanished")?;
    let audit = mm.rmap_audit();
    let audit_text = match &audit {
        Ok(_) => String::from("clean"),
        Err(e) => alloc::format!("FAILED: {e:?}"),
    };
    trail.sort_unstable();
    trail.dedup();
    let frames: alloc::vec::Vec<String> = trail.iter().map(|p| alloc::format!("{p:#x}")).collect();
    let writer_note = match (writer_cpu, written.flatten()) {
        (Some(cpu), Some(w)) => alloc::format!(
            "while cpu{cpu} wrote new values to it {} times in {} checked passes ({} writes lost{}) and waited on migration entries {} times",
            w.writes,
            w.passes,
            w.lost,
            w.first_lost.map(|f| alloc::format!(", first: {f}")).unwrap_or_default(),
            migration_waits() - waits_before
        ),
        _ => String::from("(one CPU: no concurrent writer)"),
    };
    let line = alloc::format!(
        "migration demo: a {size:?} page at {VA:#x} migrated whole {MIGRATIONS} times \
         between head frames [{}] (now {:#x}, still {last_size:?}) {writer_note}; contents \
         {}; reverse map audit {audit_text}",
        frames.join(", "),
        last.0,
        if intact {
            String::from("intact")
        } else {
            alloc::format!("CORRUPTED ({bad} words wrong at the end)")
        },
    );
    if intact && audit.is_ok() {
        Ok(line)
    } else {
        Err(line)
    }
}
