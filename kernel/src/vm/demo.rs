//! The live part of the demonstration: a 2 MiB page migrated back and forth whole while
//! another CPU keeps writing to it, with the contents checked afterwards.

use super::{activate, deactivate, migration_waits, mm, Space};
use crate::arch::{probe, smp};
use crate::percpu;
use crate::sprintln;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};
use mm::addr::{PageSize, Pfn};
use mm::aspace::FrameSource;
use mm::migrate::Destination;
use mm::vma::{HugePolicy, VmaFlags};

const VA: u64 = 0x4000_0000;
const LEN: u64 = 2 << 20;
const MIGRATIONS: usize = 16;
const WORDS: u64 = LEN / 8;

fn pattern(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
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
        if !unsafe { probe::write_u64(VA + i * 8, pattern(i)) } {
            return Err(alloc::format!("write at {:#x} faulted", VA + i * 8));
        }
    }
    let (first, size) = head_of(space).ok_or("page not mapped")?;
    // A writer on another CPU keeps rewriting one word per 4 KiB with the same values.
    let writer_cpu = percpu::online().iter().find(|&c| c != percpu::cpu_index());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = match writer_cpu {
        Some(cpu) => {
            let (space, stop) = (space.clone(), stop.clone());
            let pending = smp::run_on(cpu, move || {
                if activate(&space).is_err() {
                    return 0u64;
                }
                let mut writes = 0u64;
                while !stop.load(Ordering::Acquire) {
                    for i in (0..WORDS).step_by(512) {
                        // SAFETY: as above, in the space this CPU loaded.
                        unsafe { probe::write_u64(VA + i * 8, pattern(i)) };
                        writes += 1;
                    }
                }
                deactivate();
                writes
            });
            pending.ok()
        }
        None => None,
    };
    let waits_before = migration_waits();
    let mut trail = alloc::vec![first.0];
    for _ in 0..MIGRATIONS {
        let (head, _) = head_of(space).ok_or("page vanished")?;
        let moved = mm.migrate_one(head, Destination::Any);
        match moved {
            Ok(new) => trail.push(new.0),
            Err(e) => {
                stop.store(true, Ordering::Release);
                return Err(alloc::format!("migration failed: {e:?}"));
            }
        }
    }
    stop.store(true, Ordering::Release);
    let writes = writer.map(|w| w.wait()).unwrap_or(0);
    // SAFETY: as above; the self-test's deliberate damage, to the space loaded here.
    if corrupt && !unsafe { probe::write_u64(VA + 8, !pattern(1)) } {
        return Err(alloc::format!("write at {:#x} faulted", VA + 8));
    }
    let intact = (0..WORDS).all(|i| probe::read_u64(VA + i * 8) == Some(pattern(i)));
    let (last, last_size) = head_of(space).ok_or("page vanished")?;
    let audit = mm.rmap_audit();
    let audit_text = match &audit {
        Ok(_) => String::from("clean"),
        Err(e) => alloc::format!("FAILED: {e:?}"),
    };
    trail.sort_unstable();
    trail.dedup();
    let frames: alloc::vec::Vec<String> = trail.iter().map(|p| alloc::format!("{p:#x}")).collect();
    let writer_note = match writer_cpu {
        Some(cpu) => alloc::format!(
            "while cpu{cpu} wrote to it {writes} times and waited on migration entries {} times",
            migration_waits() - waits_before
        ),
        None => String::from("(one CPU: no concurrent writer)"),
    };
    let line = alloc::format!(
        "migration demo: a {size:?} page at {VA:#x} migrated whole {MIGRATIONS} times \
         between head frames [{}] (now {:#x}, still {last_size:?}) {writer_note}; contents \
         {}; reverse map audit {audit_text}",
        frames.join(", "),
        last.0,
        if intact { "intact" } else { "CORRUPTED" },
    );
    if intact && audit.is_ok() {
        Ok(line)
    } else {
        Err(line)
    }
}
