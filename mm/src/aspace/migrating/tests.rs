//! Tests of the list of migration entries against a simple model.

use super::*;
use crate::base::addr::PageSize;
use crate::paging::Entry;
use proptest::prelude::*;
use std::collections::BTreeMap;
use x86_64::structures::paging::PageTableFlags;
use x86_64::PhysAddr;

fn entry(size: PageSize) -> MigrationEntry {
    let flags =
        PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::USER_ACCESSIBLE;
    MigrationEntry::from_leaf(Entry::leaf(PhysAddr::new(size.bytes()), size, flags), size)
        .expect("a present leaf has a migration entry")
}

const SIZES: [PageSize; 3] = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G];

proptest! {
    /// Batches of entries are listed and taken off (each batch whole, or one entry of it
    /// put back), and every query agrees with a map from first address to entry.
    #[test]
    fn queries_agree_with_a_map(
        batches in proptest::collection::vec(
            proptest::collection::btree_map(0u64..64, 0usize..3, 1..12), 1..5),
        put_back in proptest::option::of(0usize..12),
        probes in proptest::collection::vec(0u64..(66 << 30), 32),
    ) {
        let mut list = Migrating::default();
        let mut model: BTreeMap<u64, MigrationEntry> = BTreeMap::new();
        let mut listed_batches = Vec::new();
        for (b, batch) in batches.iter().enumerate() {
            // Batch `b` lives in its own gigabyte-aligned stretch: entries never overlap.
            let items: Vec<(u64, MigrationEntry)> = batch
                .iter()
                .map(|(&slot, &s)| ((b as u64 * 64 + slot) << 30, entry(SIZES[s])))
                .collect();
            list.extend(items.iter().copied());
            model.extend(items.iter().copied());
            listed_batches.push(items);
        }
        if let Some(i) = put_back {
            let items = &mut listed_batches[0];
            if i < items.len() {
                let (va, _) = items.remove(i);
                prop_assert!(list.remove(va));
                prop_assert!(!list.remove(va), "an entry is listed once");
                model.remove(&va);
            }
        }
        let gone = listed_batches.remove(0);
        list.remove_all(gone.iter().map(|&(va, _)| va));
        for (va, _) in &gone {
            model.remove(va);
        }
        prop_assert_eq!(list.len(), model.len());
        prop_assert_eq!(list.is_empty(), model.is_empty());
        let listed: BTreeMap<u64, MigrationEntry> = list.iter().collect();
        prop_assert_eq!(&listed, &model);
        let covering = |va: u64| {
            model
                .iter()
                .find(|(&start, m)| start <= va && va < start + m.size().bytes())
                .map(|(&start, &m)| (start, m))
        };
        // Random addresses, and each entry's first, last and one-past-last byte.
        let edges = model
            .iter()
            .flat_map(|(&start, m)| [start, start + m.size().bytes() - 1, start + m.size().bytes()]);
        for p in probes.iter().copied().chain(edges) {
            prop_assert_eq!(list.covering(p), covering(p));
            let end = p + (p % 7 + 1) * (1 << 20);
            let overlaps = model
                .iter()
                .any(|(&start, m)| start < end && start + m.size().bytes() > p);
            prop_assert_eq!(list.overlaps(p, end), overlaps);
        }
        // Ranges that end where an entry begins, begin where one ends, or hold its first
        // byte only.
        let ranges: Vec<(u64, u64)> = model
            .iter()
            .flat_map(|(&start, m)| {
                let end = start + m.size().bytes();
                [(start.saturating_sub(4096), start), (end, end + 4096), (start, start + 1)]
            })
            .collect();
        for (a, b) in ranges {
            let overlaps = model
                .iter()
                .any(|(&start, m)| start < b && start + m.size().bytes() > a);
            prop_assert_eq!(list.overlaps(a, b), overlaps);
        }
        for batch in listed_batches {
            list.remove_all(batch.iter().map(|&(va, _)| va));
        }
        prop_assert!(list.is_empty());
    }
}
