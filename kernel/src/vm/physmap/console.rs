//! A [`Picture`] on the serial console: the text map for a person, then the `PHYSMAP`
//! lines for the host (formats in the module doc of [`super`]).

use super::cells::LETTERS;
use super::{Picture, ROW_CELLS};
use crate::sprintln;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use mm::base::addr::PAGE_SIZE;

/// Cells per `PHYSMAP` line: with every field repeated and 26 labels a line stays under
/// 4000 characters.
const LINE_CELLS: usize = 2048;

/// The legend line of the text map.
const LEGEND: &str = "legend: A-Z labelled VMA (lowercase: it shares the cell)  . free  \
                      : mostly free, some kernel  # kernel/unmovable  ! pinned  \
                      (blank) no RAM";

/// Print the text map, then the `PHYSMAP` lines.
pub fn print(p: &Picture) {
    text_map(p);
    for line in physmap_lines(p) {
        sprintln!("PHYSMAP {line}");
    }
}

/// `n` bytes in a short human form: 512 KiB, 4 MiB, 1 GiB.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b => format!("{} KiB", b >> 10),
    }
}

fn text_map(p: &Picture) {
    let cell = p.map.frames_per_cell;
    let row_bytes = cell * ROW_CELLS * PAGE_SIZE;
    sprintln!(
        "physmap {}: one character per {} ({cell} frames), {} per row; RAM ends at {:#x}; classified {} frames in {}.{:03} ms",
        p.phase,
        size(cell * PAGE_SIZE),
        size(row_bytes),
        p.frames * PAGE_SIZE,
        p.frames,
        p.elapsed_ns / 1_000_000,
        p.elapsed_ns / 1_000 % 1_000,
    );
    sprintln!("{LEGEND}");
    for l in &p.labels {
        sprintln!(
            "  {} = space {} {:#x}-{:#x}: {} frames mapped, {} physically contiguous run{}",
            l.letter,
            l.space.0,
            l.start,
            l.end,
            l.mapped,
            l.runs,
            if l.runs == 1 { "" } else { "s" }
        );
    }
    let c = &p.counts;
    let mut counts = format!(
        "  frames: {} free, {} kernel, {} pinned, {} no RAM",
        c.free, c.kernel, c.pinned, c.no_ram
    );
    for l in &p.labels {
        let _ = write!(counts, ", {} {}", c.vma[letter_slot(l.letter)], l.letter);
    }
    sprintln!("{counts}");
    let chars: Vec<char> = p.map.chars.chars().collect();
    let mut rows = chars.chunks(ROW_CELLS as usize).enumerate().peekable();
    while let Some((row, cells)) = rows.next() {
        let at = row as u64 * row_bytes;
        if cells.iter().all(|&c| c == ' ') {
            // Fold this row and the blank rows after it.
            let mut upto = at + row_bytes;
            while rows
                .next_if(|(_, next)| next.iter().all(|&c| c == ' '))
                .is_some()
            {
                upto += row_bytes;
            }
            let upto = upto.min(p.frames * PAGE_SIZE);
            sprintln!("  {at:#011x} (no RAM up to {upto:#x})");
            continue;
        }
        let line: String = cells.iter().collect();
        sprintln!("  {at:#011x} |{line}|");
    }
}

/// The slot of `letter` in the counts.
fn letter_slot(letter: char) -> usize {
    usize::from(super::cells::letter_index(letter)) % LETTERS
}

/// The JSON of every `PHYSMAP` line (without the prefix).
fn physmap_lines(p: &Picture) -> Vec<String> {
    let common = common_fields(p);
    let chars = p.fine.chars.as_bytes();
    let parts = chars.len().div_ceil(LINE_CELLS).max(1);
    (0..parts)
        .map(|part| {
            let from = (part * LINE_CELLS).min(chars.len());
            let to = ((part + 1) * LINE_CELLS).min(chars.len());
            // The cells are ASCII, so any byte range is a string.
            let cells = core::str::from_utf8(&chars[from..to]).unwrap_or("");
            format!("{{{common},\"part\":{part},\"parts\":{parts},\"cells\":\"{cells}\"}}")
        })
        .collect()
}

/// The fields every line of the phase repeats (the phase name, checked to need no JSON
/// escaping, and numbers only).
fn common_fields(p: &Picture) -> String {
    let mut legend = String::new();
    let mut counts = format!(
        "\"free\":{},\"kernel\":{},\"pinned\":{},\"no_ram\":{}",
        p.counts.free, p.counts.kernel, p.counts.pinned, p.counts.no_ram
    );
    let mut runs = String::new();
    for (i, l) in p.labels.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(
            legend,
            "{sep}\"{}\":\"{}:{:#x}-{:#x}\"",
            l.letter, l.space.0, l.start, l.end
        );
        let _ = write!(
            counts,
            ",\"{}\":{}",
            l.letter,
            p.counts.vma[letter_slot(l.letter)]
        );
        let _ = write!(runs, "{sep}\"{}\":{}", l.letter, l.runs);
    }
    format!(
        "\"phase\":\"{}\",\"frames_per_cell\":{},\"cells_total\":{},\"legend\":{{{legend}}},\"counts\":{{{counts}}},\"runs\":{{{runs}}}",
        p.phase,
        p.fine.frames_per_cell,
        p.fine.chars.len()
    )
}
