//! A fixed bitmap with rank: counting the set bits of any range in O(1) (one popcount and
//! two table reads per end) and reading the 64 bits from any position in two word loads.
//! It holds the classes of a [`PhysView`](super::PhysView) and the pages a VMA's movable
//! units cover. Memory: two words per 64 bits.
//!
//! Positions past the end read as clear bits.

use alloc::vec::Vec;

/// Bits and, for each word, the number of set bits in the words before it.
#[derive(Clone, Debug)]
pub(super) struct Bits {
    words: Vec<u64>,
    before: Vec<u64>,
    total: u64,
}

impl Bits {
    /// The bitmap whose bit `i` is bit `i % 64` of `words[i / 64]`.
    pub(super) fn new(words: Vec<u64>) -> Bits {
        let mut total = 0;
        // Most words of a snapshot of memory are clear (a class covers few frames), and
        // a popcount is a dozen instructions on a CPU target without one: skip them.
        let before = words
            .iter()
            .map(|&w| {
                let before = total;
                if w != 0 {
                    total += u64::from(w.count_ones());
                }
                before
            })
            .collect();
        Bits {
            words,
            before,
            total,
        }
    }

    /// Set bits before position `i`.
    #[inline]
    pub(super) fn rank(&self, i: u64) -> u64 {
        let k = (i / 64) as usize;
        match (self.words.get(k), self.before.get(k)) {
            (Some(&w), Some(&before)) => {
                before + u64::from((w & ((1u64 << (i % 64)) - 1)).count_ones())
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
        self.word_at(i) & 1 == 1
    }

    /// Bits `i..i + 64`, bit `i` lowest.
    #[inline]
    pub(super) fn word_at(&self, i: u64) -> u64 {
        let k = (i / 64) as usize;
        let word = |k: usize| self.words.get(k).copied().unwrap_or(0);
        match i % 64 {
            0 => word(k),
            s => (word(k) >> s) | (word(k + 1) << (64 - s)),
        }
    }
}

#[cfg(test)]
mod tests;
