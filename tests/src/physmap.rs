//! The kernel's picture of physical memory as it prints it: `PHYSMAP {json}` lines (the
//! format is documented in `kernel/src/vm/physmap.rs`), read back into one [`Phase`] per
//! phase name, in the order the phases first appear. [`crate::picture`] draws them.
//!
//! Only the fields the picture needs are read (`phase`, `frames_per_cell`,
//! `cells_total`, `part`, `parts`, `cells`, `legend`); others are ignored. Every part of
//! a phase must agree on `frames_per_cell`, `cells_total` and `parts`, every part from 0
//! to `parts - 1` must be there once, and the cells must add up to `cells_total` and use
//! only the map's characters. Anything else is a [`PhysmapError`], never a panic.

use std::collections::BTreeMap;
use std::fmt;

/// What starts a picture line.
pub const PREFIX: &str = "PHYSMAP ";

/// The characters a cell may be: a labelled VMA's letter (lowercase: it shares the
/// cell), `.` free, `:` mostly free, `#` kernel, `!` pinned, a blank for no RAM.
pub fn is_cell(c: char) -> bool {
    c.is_ascii_alphabetic() || matches!(c, '.' | ':' | '#' | '!' | ' ')
}

/// One phase of the picture, all its parts joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phase {
    /// The phase's name (`before`, `after`...).
    pub name: String,
    /// 4 KiB frames per cell.
    pub frames_per_cell: u64,
    /// One character per cell, from physical address 0 on.
    pub cells: String,
    /// Letter to `space:start-end`.
    pub legend: BTreeMap<char, String>,
}

/// Why the `PHYSMAP` lines do not make a picture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PhysmapError {
    /// A line whose text after the prefix is not a JSON object (1-based line number).
    BadJson {
        /// The output line.
        line: usize,
        /// What the JSON parser said.
        reason: String,
    },
    /// A line without a field the picture needs, or with a value of the wrong kind.
    BadField {
        /// The output line.
        line: usize,
        /// The field.
        field: &'static str,
    },
    /// A part that disagrees with the phase's first part on a field.
    Inconsistent {
        /// The phase.
        phase: String,
        /// The field.
        field: &'static str,
    },
    /// A part number out of range, or given twice.
    BadPart {
        /// The phase.
        phase: String,
        /// The part number.
        part: u64,
    },
    /// A part that never came.
    MissingPart {
        /// The phase.
        phase: String,
        /// The first missing part.
        part: u64,
    },
    /// The parts' cells do not add up to `cells_total`.
    WrongLength {
        /// The phase.
        phase: String,
        /// `cells_total`.
        expected: u64,
        /// The cells given.
        got: u64,
    },
    /// A cell character outside the map's alphabet.
    BadCell {
        /// The phase.
        phase: String,
        /// The character.
        cell: char,
    },
    /// A legend key that is not one uppercase letter, or a value that is not a string.
    BadLegend {
        /// The phase.
        phase: String,
        /// The key.
        key: String,
    },
}

impl fmt::Display for PhysmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhysmapError::BadJson { line, reason } => {
                write!(
                    f,
                    "line {line}: PHYSMAP is not followed by a JSON object: {reason}"
                )
            }
            PhysmapError::BadField { line, field } => {
                write!(
                    f,
                    "line {line}: PHYSMAP field {field:?} missing or of the wrong type"
                )
            }
            PhysmapError::Inconsistent { phase, field } => {
                write!(f, "phase {phase:?}: the parts disagree on {field:?}")
            }
            PhysmapError::BadPart { phase, part } => {
                write!(
                    f,
                    "phase {phase:?}: part {part} out of range or given twice"
                )
            }
            PhysmapError::MissingPart { phase, part } => {
                write!(f, "phase {phase:?}: part {part} missing")
            }
            PhysmapError::WrongLength {
                phase,
                expected,
                got,
            } => write!(
                f,
                "phase {phase:?}: {got} cells where cells_total says {expected}"
            ),
            PhysmapError::BadCell { phase, cell } => {
                write!(f, "phase {phase:?}: unknown cell character {cell:?}")
            }
            PhysmapError::BadLegend { phase, key } => {
                write!(f, "phase {phase:?}: bad legend entry {key:?}")
            }
        }
    }
}

impl std::error::Error for PhysmapError {}

/// One `PHYSMAP` line.
struct Part {
    phase: String,
    frames_per_cell: u64,
    cells_total: u64,
    part: u64,
    parts: u64,
    cells: String,
    legend: BTreeMap<char, String>,
}

/// The phases of every `PHYSMAP` line of `output`, in order of first appearance (empty
/// when there is none).
pub fn phases(output: &str) -> Result<Vec<Phase>, PhysmapError> {
    let mut groups: Vec<Vec<Part>> = Vec::new();
    for (index, line) in output.lines().enumerate() {
        let Some(json) = line.trim().strip_prefix(PREFIX) else {
            continue;
        };
        let part = parse_part(index + 1, json)?;
        match groups.iter_mut().find(|g| g[0].phase == part.phase) {
            Some(group) => group.push(part),
            None => groups.push(vec![part]),
        }
    }
    groups.into_iter().map(assemble).collect()
}

fn parse_part(line: usize, json: &str) -> Result<Part, PhysmapError> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| PhysmapError::BadJson {
            line,
            reason: e.to_string(),
        })?;
    let field = |field: &'static str| PhysmapError::BadField { line, field };
    let number = |name: &'static str| value.get(name).and_then(|v| v.as_u64()).ok_or(field(name));
    let text = |name: &'static str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or(field(name))
    };
    let phase = text("phase")?;
    let frames_per_cell = number("frames_per_cell")?;
    if !frames_per_cell.is_power_of_two() {
        return Err(field("frames_per_cell"));
    }
    let legend_value = value.get("legend").and_then(|v| v.as_object());
    let mut legend = BTreeMap::new();
    for (key, entry) in legend_value.ok_or(field("legend"))? {
        let bad = || PhysmapError::BadLegend {
            phase: phase.clone(),
            key: key.clone(),
        };
        let mut chars = key.chars();
        let letter = match (chars.next(), chars.next()) {
            (Some(c), None) if c.is_ascii_uppercase() => c,
            _ => return Err(bad()),
        };
        legend.insert(letter, entry.as_str().ok_or_else(bad)?.to_owned());
    }
    Ok(Part {
        frames_per_cell,
        cells_total: number("cells_total")?,
        part: number("part")?,
        parts: number("parts")?,
        cells: text("cells")?,
        legend,
        phase,
    })
}

/// Join one phase's parts, checking they agree and are all there.
fn assemble(parts: Vec<Part>) -> Result<Phase, PhysmapError> {
    let first = &parts[0];
    let phase = first.phase.clone();
    let inconsistent = |field| PhysmapError::Inconsistent {
        phase: phase.clone(),
        field,
    };
    let mut by_number: BTreeMap<u64, &Part> = BTreeMap::new();
    for p in &parts {
        if p.frames_per_cell != first.frames_per_cell {
            return Err(inconsistent("frames_per_cell"));
        }
        if p.cells_total != first.cells_total {
            return Err(inconsistent("cells_total"));
        }
        if p.parts != first.parts {
            return Err(inconsistent("parts"));
        }
        if p.legend != first.legend {
            return Err(inconsistent("legend"));
        }
        if p.part >= p.parts || by_number.insert(p.part, p).is_some() {
            return Err(PhysmapError::BadPart {
                phase: phase.clone(),
                part: p.part,
            });
        }
    }
    if let Some(part) = (0..first.parts).find(|n| !by_number.contains_key(n)) {
        return Err(PhysmapError::MissingPart { phase, part });
    }
    let cells: String = by_number.values().map(|p| p.cells.as_str()).collect();
    if let Some(cell) = cells.chars().find(|&c| !is_cell(c)) {
        return Err(PhysmapError::BadCell { phase, cell });
    }
    let got = cells.chars().count() as u64;
    if got != first.cells_total {
        return Err(PhysmapError::WrongLength {
            phase,
            expected: first.cells_total,
            got,
        });
    }
    Ok(Phase {
        name: phase,
        frames_per_cell: first.frames_per_cell,
        cells,
        legend: first.legend.clone(),
    })
}

#[cfg(test)]
mod tests;
