//! Classified frames into cells: a [`Tally`] counts the frames of each class, a
//! [`Painter`] cuts the stream of classified frames, in address order, into cells of a
//! power of two frames and writes one character per cell.

use alloc::string::String;

/// Labels there can be: one per letter `A`..`Z`.
pub const LETTERS: usize = 26;

/// What one frame is (see the module doc of [`super`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// In no RAM range.
    NoRam,
    /// Free in the buddy allocator or parked in a per-CPU cache.
    Free,
    /// Allocated or reserved, not a labelled VMA's, not pinned.
    Kernel,
    /// In a block with a nonzero pin count.
    Pinned,
    /// Mapped by the labelled VMA of this letter index (0 for `A`).
    Vma(u8),
}

/// The index of an uppercase letter (`A` is 0); the caller checked it is one.
pub fn letter_index(letter: char) -> u8 {
    (letter as u32).wrapping_sub('A' as u32) as u8
}

/// The letter of index `index`, uppercase or lowercase.
fn letter(index: usize, upper: bool) -> char {
    let base = if upper { b'A' } else { b'a' };
    char::from(base + (index % LETTERS) as u8)
}

/// Frames per class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Free frames.
    pub free: u64,
    /// Kernel frames.
    pub kernel: u64,
    /// Pinned frames.
    pub pinned: u64,
    /// Frames outside RAM.
    pub no_ram: u64,
    /// Frames of each labelled VMA, by letter index.
    pub vma: [u64; LETTERS],
}

impl Tally {
    /// Count `n` frames of `class`.
    pub fn add(&mut self, class: Class, n: u64) {
        let slot = match class {
            Class::NoRam => &mut self.no_ram,
            Class::Free => &mut self.free,
            Class::Kernel => &mut self.kernel,
            Class::Pinned => &mut self.pinned,
            Class::Vma(i) => &mut self.vma[usize::from(i) % LETTERS],
        };
        *slot += n;
    }

    /// Frames counted, RAM or not.
    pub fn total(&self) -> u64 {
        self.ram() + self.no_ram
    }

    /// Frames of RAM counted.
    pub fn ram(&self) -> u64 {
        self.free + self.kernel + self.pinned + self.vma.iter().sum::<u64>()
    }

    /// The character of a cell with these frames: `!` a pinned frame; the letter of the
    /// labelled VMA with the most frames (the first on a tie), uppercase when it has all
    /// the cell's RAM, lowercase when it shares it; `.` all free; `#` mostly kernel; `:`
    /// mostly free, some kernel; a blank without RAM.
    pub fn glyph(&self) -> char {
        let ram = self.ram();
        if self.pinned > 0 {
            return '!';
        }
        if ram == 0 {
            return ' ';
        }
        let (top, &most) = self
            .vma
            .iter()
            .enumerate()
            .rev()
            .max_by_key(|&(_, n)| n)
            .unwrap_or((0, &0));
        if most > 0 {
            letter(top, most == ram)
        } else if self.free == ram {
            '.'
        } else if self.kernel >= self.free {
            '#'
        } else {
            ':'
        }
    }
}

/// One map: a character per cell of `frames_per_cell` frames, from frame 0 on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cells {
    /// Frames per cell (a power of two).
    pub frames_per_cell: u64,
    /// One character per cell (see [`Tally::glyph`]).
    pub chars: String,
}

/// Cuts classified frames, given in address order without gaps, into cells.
pub struct Painter {
    frames_per_cell: u64,
    /// Frames of the cell being filled.
    filled: u64,
    cell: Tally,
    chars: String,
}

impl Painter {
    /// A painter of cells of `frames_per_cell` frames for a map of `frames` frames.
    pub fn new(frames_per_cell: u64, frames: u64) -> Painter {
        let cells = frames.div_ceil(frames_per_cell);
        Painter {
            frames_per_cell,
            filled: 0,
            cell: Tally::default(),
            chars: String::with_capacity(usize::try_from(cells).unwrap_or(0)),
        }
    }

    /// The next `n` frames are of `class`.
    pub fn add(&mut self, mut n: u64, class: Class) {
        while n > 0 {
            let take = n.min(self.frames_per_cell - self.filled);
            self.cell.add(class, take);
            self.filled += take;
            n -= take;
            if self.filled == self.frames_per_cell {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        self.chars.push(self.cell.glyph());
        self.cell = Tally::default();
        self.filled = 0;
    }

    /// The cells, the last one possibly partial.
    pub fn finish(mut self) -> Cells {
        if self.filled > 0 {
            self.flush();
        }
        Cells {
            frames_per_cell: self.frames_per_cell,
            chars: self.chars,
        }
    }
}
