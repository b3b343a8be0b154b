//! The migration entries an address space's page table holds: what unmap, protect, pin
//! and destroy look at before touching a range, and what the audit compares with the
//! table. Kept behind the space's lock.
//!
//! A move engine batch lists all of its entries in a space at once and takes them all off
//! at once, and a space rarely has more than one batch in flight: the list is a vector in
//! the order entries were listed, so listing is an append and the common removal a clear
//! (no tree nodes to build and free per batch). The queries scan it; they run on unmap,
//! protect and pin only while a batch is in flight, over at most a few batches' entries.

use crate::paging::MigrationEntry;
use alloc::vec::Vec;

/// One listed entry: the first address it covers and the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listed {
    va: u64,
    mig: MigrationEntry,
}

impl Listed {
    fn end(&self) -> u64 {
        self.va.saturating_add(self.mig.size().bytes())
    }
}

/// The migration entries of one address space (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct Migrating {
    listed: Vec<Listed>,
}

impl Migrating {
    /// Whether no entry is listed.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// How many entries are listed (tests count a batch's).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.listed.len()
    }

    /// List `entries` (first address and entry each), none at an address listed already.
    pub fn extend(&mut self, entries: impl IntoIterator<Item = (u64, MigrationEntry)>) {
        self.listed
            .extend(entries.into_iter().map(|(va, mig)| Listed { va, mig }));
    }

    /// Take the entry at `va` off the list; whether there was one.
    pub fn remove(&mut self, va: u64) -> bool {
        match self.listed.iter().position(|l| l.va == va) {
            Some(i) => {
                self.listed.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Take the entries at `vas` (one batch's, all listed, in any order) off the list.
    pub fn remove_all(&mut self, vas: impl ExactSizeIterator<Item = u64>) {
        if vas.len() == self.listed.len() {
            // As many as are listed, all listed: they are the whole list.
            self.listed.clear();
            return;
        }
        let mut sorted: Vec<u64> = vas.collect();
        sorted.sort_unstable();
        self.listed.retain(|l| sorted.binary_search(&l.va).is_err());
    }

    /// Whether an entry overlaps `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.listed.iter().any(|l| l.va < end && l.end() > start)
    }

    /// The entry covering `va`: its first address and the entry.
    pub fn covering(&self, va: u64) -> Option<(u64, MigrationEntry)> {
        self.listed
            .iter()
            .find(|l| l.va <= va && va < l.end())
            .map(|l| (l.va, l.mig))
    }

    /// Every listed entry (first address, entry), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, MigrationEntry)> + '_ {
        self.listed.iter().map(|l| (l.va, l.mig))
    }
}

#[cfg(test)]
mod tests;
