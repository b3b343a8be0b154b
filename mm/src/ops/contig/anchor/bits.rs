//! A bitmap with rank, stored by groups of [`GROUP`] bits: a group all clear or all set
//! is one word of state and no bits, so a snapshot of memory that is mostly free or
//! mostly one long run of a class costs one step per group, not per 64 frames. Counting
//! the set bits of any range is O(1) (a group or word read and at most one popcount per
//! end), and reading the 64 bits from any position takes two word reads. It holds the
//! classes of a [`PhysView`](super::PhysView).
//!
//! Positions past the end read as clear bits.

use alloc::vec;
use alloc::vec::Vec;

/// Bits per group: 16 MiB of 4 KiB frames, so a 16 GiB view has 1024 groups per class,
/// and a group mixing classes costs 64 words.
const GROUP: u64 = 4096;
/// Words of a group's bits.
const GROUP_WORDS: usize = (GROUP / 64) as usize;
/// A group's state: every bit clear.
const CLEAR: u32 = u32::MAX;
/// A group's state: every bit set.
const SET: u32 = u32::MAX - 1;

/// The state of each group: [`CLEAR`], [`SET`] or the index of its first word.
#[derive(Clone, Debug)]
struct Groups {
    state: Vec<u32>,
    /// The mixed groups' bits, [`GROUP_WORDS`] words each.
    words: Vec<u64>,
}

impl Groups {
    /// Word `k` of the bitmap.
    #[inline]
    fn word(&self, k: u64) -> u64 {
        match self.state.get((k / GROUP_WORDS as u64) as usize) {
            None | Some(&CLEAR) => 0,
            Some(&SET) => u64::MAX,
            Some(&at) => self.words[at as usize + (k % GROUP_WORDS as u64) as usize],
        }
    }
}

/// A [`Bits`] being built: every bit clear at first, ranges set or cleared in any order.
#[derive(Clone, Debug)]
pub(super) struct BitsBuilder {
    len: u64,
    groups: Groups,
}

impl BitsBuilder {
    /// `len` clear bits.
    pub(super) fn new(len: u64) -> BitsBuilder {
        BitsBuilder {
            len,
            groups: Groups {
                state: vec![CLEAR; len.div_ceil(GROUP) as usize],
                words: Vec::new(),
            },
        }
    }

    /// Set bits `[i, j)` when they lie in one word of a group that mixes set and clear
    /// bits already, with one word operation, and say so; any other range is left to
    /// [`fill`](Self::fill). A snapshot of memory where small blocks of two classes
    /// alternate paints thousands of one-frame runs, nearly all of them this way.
    #[inline]
    pub(super) fn set_in_word(&mut self, i: u64, j: u64) -> bool {
        if i >= j || j > self.len || i / 64 != (j - 1) / 64 {
            return false;
        }
        match self.groups.state.get((i / GROUP) as usize) {
            Some(&at) if at != CLEAR && at != SET => {
                let mask = (u64::MAX >> (64 - (j - i))) << (i % 64);
                self.groups.words[at as usize + (i % GROUP / 64) as usize] |= mask;
                true
            }
            _ => false,
        }
    }

    /// Set (`on`) or clear bits `[i, j)` (clipped to the length): whole groups by their
    /// state, the parts of the two end groups a word at a time.
    pub(super) fn fill(&mut self, i: u64, j: u64, on: bool) {
        let j = j.min(self.len);
        let mut at = i;
        while at < j {
            let g = at / GROUP;
            let (first, end) = (g * GROUP, (g * GROUP + GROUP).min(j));
            let whole = if on { SET } else { CLEAR };
            let state = &mut self.groups.state[g as usize];
            if at == first && end == first + GROUP {
                *state = whole;
            } else if *state != whole {
                let words = &mut self.groups.words;
                if *state == CLEAR || *state == SET {
                    let fill = if *state == SET { u64::MAX } else { 0 };
                    *state = words.len() as u32;
                    words.extend([fill; GROUP_WORDS]);
                }
                let base = *state as usize;
                fill_words(
                    &mut words[base..base + GROUP_WORDS],
                    at - first,
                    end - first,
                    on,
                );
            }
            at = end;
        }
    }

    /// The bitmap, with its rank tables.
    pub(super) fn finish(self) -> Bits {
        let groups = self.groups;
        let mut total = 0;
        let mut group_before = Vec::with_capacity(groups.state.len());
        let mut word_before = vec![0; groups.words.len()];
        for &state in &groups.state {
            group_before.push(total);
            match state {
                CLEAR => {}
                SET => total += GROUP,
                at => {
                    let at = at as usize;
                    for (w, before) in groups.words[at..at + GROUP_WORDS]
                        .iter()
                        .zip(&mut word_before[at..at + GROUP_WORDS])
                    {
                        *before = total;
                        total += u64::from(w.count_ones());
                    }
                }
            }
        }
        Bits {
            groups,
            group_before,
            word_before,
            total,
        }
    }
}

/// Set (`on`) or clear bits `[i, j)` of `words`, a word at a time.
fn fill_words(words: &mut [u64], i: u64, j: u64, on: bool) {
    let mut at = i;
    while at < j {
        let (k, bit) = ((at / 64) as usize, at % 64);
        let n = (64 - bit).min(j - at);
        let mask = (u64::MAX >> (64 - n)) << bit;
        if on {
            words[k] |= mask;
        } else {
            words[k] &= !mask;
        }
        at += n;
    }
}

/// The bits and, for each group and each word of a mixed group, the set bits before it.
#[derive(Clone, Debug)]
pub(super) struct Bits {
    groups: Groups,
    group_before: Vec<u64>,
    word_before: Vec<u64>,
    total: u64,
}

impl Bits {
    /// Set bits before position `i`.
    #[inline]
    pub(super) fn rank(&self, i: u64) -> u64 {
        let g = (i / GROUP) as usize;
        match (self.groups.state.get(g), self.group_before.get(g)) {
            (Some(&CLEAR), Some(&before)) => before,
            (Some(&SET), Some(&before)) => before + i % GROUP,
            (Some(&at), Some(_)) => {
                let w = at as usize + (i % GROUP / 64) as usize;
                let below = self.groups.words[w] & ((1u64 << (i % 64)) - 1);
                self.word_before[w] + u64::from(below.count_ones())
            }
            _ => self.total,
        }
    }

    /// Set bits in `[i, j)` (`i <= j`).
    #[inline]
    pub(super) fn count(&self, i: u64, j: u64) -> u64 {
        self.rank(j) - self.rank(i)
    }

    /// Whether bit `i` is set.
    #[inline]
    pub(super) fn get(&self, i: u64) -> bool {
        self.groups.word(i / 64) >> (i % 64) & 1 == 1
    }

    /// Bits `i..i + 64`, bit `i` lowest.
    #[inline]
    pub(super) fn word_at(&self, i: u64) -> u64 {
        let k = i / 64;
        match i % 64 {
            0 => self.groups.word(k),
            s => (self.groups.word(k) >> s) | (self.groups.word(k + 1) << (64 - s)),
        }
    }
}

#[cfg(test)]
mod tests;
