//! The soak (`mode=soak`, `./run-qemu.sh soak --minutes N`; not part of the test suite):
//! writers with changing values (see [`super::load`]) on every CPU but this one, against
//! a mixed stream of operations on this CPU for the given number of minutes (see
//! [`memory`] for what is moved and where the writers' words are):
//!
//! - batches of [`memory::BATCH`] 4 KiB migrations or [`memory::PAIRS`] 4 KiB exchanges,
//!   one shootdown per batch, whenever nothing else is due: they make most of the moves;
//! - operations on 2 MiB ranges (migrations, exchanges, splits, promotions, collapses in
//!   place or by copy), [`MID_SHARE`] % of the time;
//! - a split, promotion or collapse of the 1 GiB page every [`GIGA_SHAPE_S`] seconds;
//! - migrations and exchanges of the 1 GiB page, [`GIGA_MOVE_SHARE`] % of the time: a
//!   gigabyte copied or swapped takes from seconds to a minute under emulation (with the
//!   writers waiting on it and the host shared), so there are a few per run, each timed
//!   on its own line.
//!
//! [`Schedule`] picks the class of the next operation. Every [`AUDIT_S`] seconds and at
//! the end, the reverse-map audit (every page-table leaf and migration entry against the
//! reverse map, the VMAs and the frame counts) and the allocator audit. Progress every
//! [`PROGRESS_S`] seconds; at the end, the totals as one `SOAK {json}` line (see
//! [`counts`] for what a move is) and the error count: words that lost a write,
//! operations that failed other than by a transient, typed refusal (`Busy`, out of
//! memory, a range not contiguous after a refused collapse), and failed audits.
//!
//! The 1 GiB part needs 1 GiB pages and two free 1 GiB blocks (the page and room to
//! migrate it or to map the partner of its exchange); without them the soak runs at
//! 4 KiB and 2 MiB only and says so.

mod counts;
mod memory;

use super::load::{self, Writer};
use super::KernelMm;
use crate::arch::percpu;
use crate::arch::timer::{self, Deadline};
use crate::mem::frames;
use crate::smp::{self, Pending};
use crate::sprintln;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use counts::{Class, Counts};
use memory::{Memory, Rng};

/// Seconds between progress lines.
pub const PROGRESS_S: u64 = 10;
/// Milliseconds each writer sleeps after a pass (halted, so that under emulation the
/// operations' CPU gets more of the host).
const WRITER_PAUSE_MS: u64 = 10;
/// Seconds between audits.
const AUDIT_S: u64 = 60;
/// Shares of the time, in percent, of the 2 MiB operations and of the 1 GiB moves; the
/// 4 KiB batches have the rest.
const MID_SHARE: u64 = 15;
const GIGA_MOVE_SHARE: u64 = 20;
/// Seconds between the end of a split, promotion or collapse at 1 GiB and the next.
const GIGA_SHAPE_S: u64 = 15;

/// Which class of operation runs next.
struct Schedule {
    with_1g: bool,
    /// When the next split, promotion or collapse at 1 GiB is due (ns into the run).
    next_shape_ns: u64,
}

impl Schedule {
    /// A 1 GiB split, promotion or collapse when one is due; else a 1 GiB move when the
    /// gigabyte is one page and the moves have had less than their share of the
    /// `elapsed` time (none in the first [`GIGA_SHAPE_S`] seconds, so that a short run
    /// does not begin with a minute of one move); else a 2 MiB operation when those have had less than theirs;
    /// else a 4 KiB batch.
    fn next(&self, c: &Counts, elapsed_ns: u64, giga_is_one_page: bool) -> Class {
        let behind =
            |class: Class, share: u64| c.spent_ns[class.index()] * 100 < share * elapsed_ns;
        if self.with_1g && elapsed_ns >= self.next_shape_ns {
            Class::GigaShape
        } else if giga_is_one_page
            && elapsed_ns >= GIGA_SHAPE_S * 1_000_000_000
            && behind(Class::GigaMove, GIGA_MOVE_SHARE)
        {
            Class::GigaMove
        } else if behind(Class::Mid, MID_SHARE) {
            Class::Mid
        } else {
            Class::Small
        }
    }
}

/// Both audits (with no operation in flight: the writers only write words of pages
/// that stay mapped, which changes no table, count or allocator state).
fn audit(mm: &KernelMm, c: &mut Counts) {
    let started = timer::now_ns();
    if let Err(e) = mm.rmap_audit() {
        c.error(format!("reverse-map audit: {e:?}"));
    }
    if let Err(e) = frames::drain_and_audit() {
        c.error(format!("allocator audit: {e:?}"));
    }
    c.audits += 1;
    c.audit_ns += timer::now_ns() - started;
}

/// Run the soak for `minutes`; Ok with the error count once it ends (the soak passes
/// when it is zero), Err when it could not start.
pub fn run(seed: u64, minutes: u64) -> Result<u64, String> {
    let mm = super::mm().ok_or("address spaces are not set up")?;
    let (mut memory, pages) = Memory::set_up(mm)?;
    let me = percpu::cpu_index();
    let cpus: Vec<u32> = percpu::online().iter().filter(|&c| c != me).collect();
    sprintln!(
        "soak: {minutes} min, {} writers on CPUs {cpus:?} ({} pages each), operations on CPU {me}; batches of {} 4 KiB migrations or {} exchanges in a pool of {} pages{}",
        cpus.len(),
        pages.len(),
        memory::BATCH,
        memory::PAIRS,
        memory::POOL_PAGES,
        if memory.with_1g {
            ""
        } else {
            "; no 1 GiB part (no 1 GiB pages or fewer than 2 free 1 GiB blocks)"
        }
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut running: Vec<Pending<Writer>> = Vec::new();
    for (k, &cpu) in cpus.iter().enumerate() {
        let w = Writer::new(memory.space.clone(), k as u64 + 1, &pages);
        let stop = stop.clone();
        match smp::run_on(cpu, move || w.run_paced(&stop, WRITER_PAUSE_MS)) {
            Ok(p) => running.push(p),
            Err(e) => sprintln!("soak: no writer on CPU {cpu}: {e}"),
        }
    }
    let mut counts = Counts::default();
    let mut rng = Rng(seed | 1);
    let started = timer::now_ns();
    let end = Deadline::after_ms(minutes.saturating_mul(60_000));
    let mut schedule = Schedule {
        with_1g: memory.with_1g,
        next_shape_ns: GIGA_SHAPE_S * 1_000_000_000,
    };
    let mut next_progress = PROGRESS_S;
    let mut next_audit = AUDIT_S;
    while !end.expired() {
        let before = timer::now_ns();
        let class = schedule.next(&counts, before - started, memory.giga_is_one_page());
        let giga = match class {
            Class::Small => {
                memory.small(&mut counts, &mut rng);
                None
            }
            Class::Mid => {
                memory.mid(&mut counts, &mut rng);
                None
            }
            Class::GigaShape => memory.giga_shape(&mut counts, &mut rng),
            Class::GigaMove => Some(memory.giga_move(&mut counts)),
        };
        if let Some(kind) = giga {
            sprintln!(
                "soak: {} s: {} took {} ms",
                (before - started) / 1_000_000_000,
                kind.name(),
                (timer::now_ns() - before) / 1_000_000
            );
        }
        let now = timer::now_ns();
        counts.spent_ns[class.index()] += now - before;
        if class == Class::GigaShape {
            schedule.next_shape_ns = now - started + GIGA_SHAPE_S * 1_000_000_000;
        }
        let seconds = (now - started) / 1_000_000_000;
        if seconds >= next_audit {
            audit(mm, &mut counts);
            next_audit = seconds + AUDIT_S;
        }
        if seconds >= next_progress {
            counts.progress(seconds);
            next_progress = seconds + PROGRESS_S;
        }
    }
    stop.store(true, Ordering::Release);
    let mut writers: Vec<Writer> = running.into_iter().map(Pending::wait).collect();
    for w in writers.iter_mut() {
        w.verify();
    }
    let (updates, word_errors, first) = load::totals(&writers);
    counts.errors += word_errors;
    if let Some(e) = first {
        counts.first_error.get_or_insert(e);
    }
    audit(mm, &mut counts);
    if let Err(e) = mm.destroy_space(&memory.space) {
        counts.error(format!("destroy_space: {e}"));
    }
    if let Err(e) = frames::drain_and_audit() {
        counts.error(format!("allocator audit after destroying the space: {e:?}"));
    }
    let seconds = (timer::now_ns() - started) / 1_000_000_000;
    counts.progress(seconds);
    sprintln!(
        "SOAK {}",
        counts.json((writers.len(), updates, word_errors), seconds)
    );
    if let Some(e) = &counts.first_error {
        sprintln!("soak: first error: {e}");
    }
    sprintln!("VMSTAT {}", mm.vmstat().json());
    sprintln!("soak: {} errors", counts.errors);
    Ok(counts.errors)
}
