//! The picture of physical memory: for every frame of RAM, whether it is free, mapped by
//! one of the VMAs a caller labels with a letter, pinned, or held by the kernel; printed
//! on the console as a text map for a person and as `PHYSMAP {json}` lines for the host
//! runner, which turns them into a PNG (`target/demo/physmap.png`). Contiguity generation
//! will show its effect with it: the pictures of one run, before and after.
//!
//! This module owns the classification ([`classify`]) and what a [`Picture`] holds;
//! [`cells`] turns classified frames into characters, [`sweep`] walks the frame table and
//! [`console`] prints.
//!
//! # Classes
//!
//! Every frame from 0 to the end of the highest RAM range is exactly one of:
//!
//! - *no RAM*: in no RAM range of the firmware's memory map (the PCI hole, MMIO);
//! - *free*: in a free buddy block, or an order-0 block parked unused in a per-CPU frame
//!   cache (`CACHED`);
//! - *pinned*: in an allocated block with a nonzero pin count (a pinned page of a
//!   labelled VMA counts here, not under its letter);
//! - *a labelled VMA*: mapped by a present leaf of that VMA (a 2 MiB or 1 GiB leaf covers
//!   512 or 262144 frames); a frame two labelled VMAs map goes to the first of the list;
//! - *kernel*: anything else, allocated or never handed to the allocator (kernel image,
//!   frame table, page tables, heap, firmware data, pages of unlabelled address spaces).
//!
//! # Cells
//!
//! A cell is a power-of-two run of frames, shown as one character ([`cells::Tally::glyph`]):
//! `!` it holds a pinned frame; a letter when it holds frames of a labelled VMA (the one
//! with the most frames in the cell), uppercase when that VMA has the whole cell's RAM,
//! lowercase when it shares it; `.` all free; `#` mostly kernel; `:` mostly free with
//! some kernel; a blank when the cell has no RAM at all.
//!
//! # Console
//!
//! The text map: a header line naming the phase and the cell size, a one-line legend, a
//! line per labelled VMA (its space and range, frames mapped, physically contiguous runs
//! in virtual order), the frame counts, then rows of 64 cells (`|...|`), each with the
//! physical address of its first cell at the left. Cells are a power of two frames chosen
//! so the map has at most 32 rows (1 GiB to 16 GiB of RAM: 512 KiB to 16 MiB per cell);
//! rows without any RAM are folded into one `(no RAM up to ...)` line.
//!
//! Then one or more lines, each `PHYSMAP ` and a JSON object on one line (ASCII, under
//! 4000 characters), whose field names are stable (scripts read them):
//!
//! - `phase`: the phase's name (lowercase letters, digits, `-`, `_`);
//! - `frames_per_cell`: 4 KiB frames per cell of `cells` (a power of two, at most 512:
//!   2 MiB);
//! - `cells_total`: cells of the whole map, starting at physical address 0;
//! - `part`, `parts`: this line's index (from 0) and how many lines the phase has;
//!   `cells` of the parts, in `part` order, concatenate to the whole map;
//! - `cells`: the cells of this part, one character each, as above;
//! - `legend`: letter to `"space:start-end"` (the address space's id, the VMA's virtual
//!   range in hex), e.g. `{"A":"1:0x40000000-0x40200000"}`;
//! - `counts`: frames per class over the whole map: `free`, `kernel`, `pinned`,
//!   `no_ram`, and one entry per letter;
//! - `runs`: per letter, how many physically contiguous runs its present pages form in
//!   virtual order (1: the VMA's pages are one contiguous block of physical memory).
//!
//! Every part repeats every field but `part` and `cells`.
//!
//! # Cost
//!
//! Each labelled address space's leaves are read once, under its lock; then one pass
//! over the frame table, a block at a time (a free 1 GiB block is one step), with no
//! lock at all: a block that changes during the pass may be seen as before or after the
//! change, never torn into a panic. On the 4 GiB guest this takes milliseconds.

mod cells;
mod console;
mod sweep;

use super::Space;
use crate::arch::timer;
use crate::mem::boot_memory;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use mm::aspace::SpaceId;
use mm::backend::source::FrameSource;
use mm::base::addr::PAGE_SIZE;

pub use cells::{Cells, Tally};
use sweep::Owned;

/// A VMA to show: its letter (`'A'..='Z'`), its address space and its virtual range
/// `[start, end)`.
pub type Label<'a> = (char, &'a Space, u64, u64);

/// Cells per row of the text map.
pub const ROW_CELLS: u64 = 64;
/// Most rows of the text map.
const MAX_ROWS: u64 = 32;
/// Cells the `PHYSMAP` lines aim at (finer than the text map)...
const FINE_CELLS: u64 = 4096;
/// ...but never more than 2 MiB (a pageblock) per cell.
const FINE_MAX_FRAMES: u64 = 512;
/// Longest phase name.
const MAX_PHASE: usize = 32;

/// Why no picture was taken. Nothing is printed then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhysmapError {
    /// A label that is not an uppercase ASCII letter.
    BadLetter(char),
    /// Two VMAs with the same letter.
    RepeatedLetter(char),
    /// A VMA range that is empty or reversed.
    EmptyRange(char),
    /// A phase name that is empty, longer than 32 characters or has characters other
    /// than lowercase letters, digits, `-` and `_`.
    BadPhase,
    /// The memory map lists no RAM.
    NoRam,
}

impl fmt::Display for PhysmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhysmapError::BadLetter(c) => write!(f, "label {c:?} is not a letter A-Z"),
            PhysmapError::RepeatedLetter(c) => write!(f, "label {c:?} given twice"),
            PhysmapError::EmptyRange(c) => write!(f, "VMA {c} has an empty range"),
            PhysmapError::BadPhase => {
                f.write_str("a phase name is 1 to 32 lowercase letters, digits, '-' or '_'")
            }
            PhysmapError::NoRam => f.write_str("the memory map lists no RAM"),
        }
    }
}

/// One labelled VMA as the picture saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelInfo {
    /// Its letter.
    pub letter: char,
    /// Its address space.
    pub space: SpaceId,
    /// First virtual address.
    pub start: u64,
    /// One past the last virtual address.
    pub end: u64,
    /// Frames its present leaves map inside the range.
    pub mapped: u64,
    /// Physically contiguous runs those frames form, in virtual order.
    pub runs: u64,
}

/// The classified frames of one phase.
#[derive(Clone, Debug)]
pub struct Picture {
    /// The phase's name.
    pub phase: String,
    /// The labelled VMAs, in the order given.
    pub labels: Vec<LabelInfo>,
    /// Frames per class over the whole map.
    pub counts: Tally,
    /// Frames mapped: 0 to the end of the highest RAM range.
    pub frames: u64,
    /// The text map's cells.
    pub map: Cells,
    /// The `PHYSMAP` lines' cells.
    pub fine: Cells,
    /// How long the classification took (leaves, frame table, cells).
    pub elapsed_ns: u64,
}

impl Picture {
    /// Print the text map and the `PHYSMAP` lines.
    pub fn print(&self) {
        console::print(self);
    }
}

/// The smallest power of two of frames per cell that covers `frames` in `cells` cells.
fn frames_per_cell(frames: u64, cells: u64) -> u64 {
    frames.div_ceil(cells).max(1).next_power_of_two()
}

fn check_phase(phase: &str) -> Result<(), PhysmapError> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if phase.is_empty() || phase.len() > MAX_PHASE || !phase.chars().all(allowed) {
        return Err(PhysmapError::BadPhase);
    }
    Ok(())
}

fn check_labels(labels: &[Label<'_>]) -> Result<(), PhysmapError> {
    for (i, &(letter, _, start, end)) in labels.iter().enumerate() {
        if !letter.is_ascii_uppercase() {
            return Err(PhysmapError::BadLetter(letter));
        }
        if labels[..i].iter().any(|l| l.0 == letter) {
            return Err(PhysmapError::RepeatedLetter(letter));
        }
        if start >= end {
            return Err(PhysmapError::EmptyRange(letter));
        }
    }
    Ok(())
}

/// The frames each label's present leaves map (clipped to its range), and what the
/// label looks like.
fn read_label(label: &Label<'_>, out: &mut Vec<Owned>) -> LabelInfo {
    let &(letter, space, start, end) = label;
    let index = cells::letter_index(letter);
    let mut info = LabelInfo {
        letter,
        space: space.id(),
        start,
        end,
        mapped: 0,
        runs: 0,
    };
    // (virtual end, physical end) of the run so far.
    let mut run_end: Option<(u64, u64)> = None;
    for (va, t) in space.leaves() {
        let (leaf_start, leaf_end) = (va.as_u64(), va.as_u64() + t.size.bytes());
        let (from, to) = (leaf_start.max(start), leaf_end.min(end));
        if from >= to {
            continue;
        }
        let pa = t.leaf_base_pa.as_u64() + (from - leaf_start);
        let pa_end = pa + (to - from);
        if run_end != Some((from, pa)) {
            info.runs += 1;
        }
        run_end = Some((to, pa_end));
        let owned = Owned {
            start: pa / PAGE_SIZE,
            end: pa_end.div_ceil(PAGE_SIZE),
            label: index,
        };
        info.mapped += owned.end - owned.start;
        out.push(owned);
    }
    info
}

/// Sort the owned ranges by frame and make them disjoint: where two overlap, the
/// label given first keeps the frames. Adjacent ranges of one label are merged.
fn disjoint(mut owned: Vec<Owned>, labels: &[LabelInfo]) -> Vec<Owned> {
    let rank = |index: u8| {
        labels
            .iter()
            .position(|l| cells::letter_index(l.letter) == index)
    };
    owned.sort_unstable_by_key(|o| (o.start, rank(o.label)));
    let mut out: Vec<Owned> = Vec::with_capacity(owned.len());
    for mut o in owned {
        if let Some(last) = out.last_mut() {
            o.start = o.start.max(last.end);
            if o.start >= o.end {
                continue;
            }
            if last.end == o.start && last.label == o.label {
                last.end = o.end;
                continue;
            }
        }
        out.push(o);
    }
    out
}

/// Classify every frame of RAM for `phase`, with the VMAs of `labels` by letter.
pub fn classify(labels: &[Label<'_>], phase: &str) -> Result<Picture, PhysmapError> {
    check_phase(phase)?;
    check_labels(labels)?;
    let ram = boot_memory().ram.ranges();
    let end = ram.last().ok_or(PhysmapError::NoRam)?.end;
    let started = timer::now_ns();
    let frames = end.div_ceil(PAGE_SIZE);
    let mut owned = Vec::new();
    let infos: Vec<LabelInfo> = labels.iter().map(|l| read_label(l, &mut owned)).collect();
    let owned = disjoint(owned, &infos);
    let map_cell = frames_per_cell(frames, ROW_CELLS * MAX_ROWS);
    let fine_cell = frames_per_cell(frames, FINE_CELLS).min(FINE_MAX_FRAMES);
    let mut map = cells::Painter::new(map_cell, frames);
    let mut fine = cells::Painter::new(fine_cell, frames);
    let mut counts = Tally::default();
    let table = super::frames().frame_table();
    sweep::sweep(table, ram, &owned, frames, &mut |n, class| {
        counts.add(class, n);
        map.add(n, class);
        fine.add(n, class);
    });
    Ok(Picture {
        phase: String::from(phase),
        labels: infos,
        counts,
        frames,
        map: map.finish(),
        fine: fine.finish(),
        elapsed_ns: timer::now_ns().saturating_sub(started),
    })
}
