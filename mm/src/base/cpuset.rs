//! Sets of CPUs, named by dense CPU index: IPI targets, shootdown targets, the CPUs that
//! have an address space loaded.

use core::sync::atomic::{AtomicU64, Ordering};

/// Most CPUs a set can hold.
pub const MAX_CPUS: usize = 256;

const WORDS: usize = MAX_CPUS / 64;

/// A set of CPUs by index, up to [`MAX_CPUS`].
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSet {
    words: [u64; WORDS],
}

impl CpuSet {
    /// The empty set.
    pub const fn new() -> CpuSet {
        CpuSet { words: [0; WORDS] }
    }

    /// The set holding just `cpu` (empty if `cpu` is not below [`MAX_CPUS`]).
    pub fn single(cpu: u32) -> CpuSet {
        let mut set = CpuSet::new();
        set.insert(cpu);
        set
    }

    /// Add `cpu`; false (and no change) if it is not below [`MAX_CPUS`].
    pub fn insert(&mut self, cpu: u32) -> bool {
        let Some(word) = self.words.get_mut(cpu as usize / 64) else {
            return false;
        };
        *word |= 1 << (cpu % 64);
        true
    }

    /// Remove `cpu` (no-op if absent).
    pub fn remove(&mut self, cpu: u32) {
        if let Some(word) = self.words.get_mut(cpu as usize / 64) {
            *word &= !(1 << (cpu % 64));
        }
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.words
            .get(cpu as usize / 64)
            .is_some_and(|w| w & (1 << (cpu % 64)) != 0)
    }

    /// How many CPUs are in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The CPUs in the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + use<> {
        let words = self.words;
        (0..MAX_CPUS as u32).filter(move |&cpu| words[cpu as usize / 64] & (1 << (cpu % 64)) != 0)
    }

    /// The CPUs in `self` but not in `other`.
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        CpuSet {
            words: core::array::from_fn(|i| self.words[i] & !other.words[i]),
        }
    }

    /// The CPUs in `self` or in `other`.
    pub fn union(&self, other: &CpuSet) -> CpuSet {
        CpuSet {
            words: core::array::from_fn(|i| self.words[i] | other.words[i]),
        }
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> CpuSet {
        let mut set = CpuSet::new();
        for cpu in iter {
            set.insert(cpu);
        }
        set
    }
}

impl core::fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// A [`CpuSet`] that CPUs update concurrently.
pub struct AtomicCpuSet {
    words: [AtomicU64; WORDS],
}

impl AtomicCpuSet {
    /// The empty set.
    pub const fn new() -> AtomicCpuSet {
        AtomicCpuSet {
            words: [const { AtomicU64::new(0) }; WORDS],
        }
    }

    /// Add `cpu`; false (and no change) if it is not below [`MAX_CPUS`].
    pub fn insert(&self, cpu: u32) -> bool {
        let Some(word) = self.words.get(cpu as usize / 64) else {
            return false;
        };
        word.fetch_or(1 << (cpu % 64), Ordering::AcqRel);
        true
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.words
            .get(cpu as usize / 64)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (cpu % 64)) != 0)
    }

    /// A snapshot of the set.
    pub fn load(&self) -> CpuSet {
        CpuSet {
            words: core::array::from_fn(|i| self.words[i].load(Ordering::Acquire)),
        }
    }

    /// Remove `cpu` (no-op if absent).
    pub fn remove(&self, cpu: u32) {
        if let Some(word) = self.words.get(cpu as usize / 64) {
            word.fetch_and(!(1 << (cpu % 64)), Ordering::AcqRel);
        }
    }

    /// Empty the set, returning what it held (each word taken atomically).
    pub fn take(&self) -> CpuSet {
        CpuSet {
            words: core::array::from_fn(|i| self.words[i].swap(0, Ordering::AcqRel)),
        }
    }
}

impl Default for AtomicCpuSet {
    fn default() -> Self {
        AtomicCpuSet::new()
    }
}
