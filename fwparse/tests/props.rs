//! Property tests over corrupted firmware data: whatever the input, the parsers return
//! well-formed results and never panic.

use fwparse::acpi::{madt_cpus, madt_entries, srat_entries, MadtEntry, SratEntry};
use fwparse::memmap::{normalise, Kind, Range, PAGE};
use proptest::prelude::*;

const N: usize = 16;
const LIMIT: u64 = 1 << 40;

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Usable), Just(Kind::Ram), Just(Kind::Reserved)]
}

/// Regions with small, often unaligned, often overlapping or inverted bounds (and a few
/// near the top of the address space).
fn region() -> impl Strategy<Value = (u64, u64, Kind)> {
    let bound = prop_oneof![
        8 => 0u64..(64 * PAGE),
        1 => (LIMIT - 4 * PAGE)..(LIMIT + 4 * PAGE),
        1 => (u64::MAX - 4 * PAGE)..=u64::MAX,
    ];
    (bound.clone(), bound, kind())
}

fn well_formed(ranges: &[Range]) -> Result<(), TestCaseError> {
    for r in ranges {
        prop_assert!(r.start < r.end, "empty {r:?}");
        prop_assert!(r.start % PAGE == 0 && r.end % PAGE == 0, "unaligned {r:?}");
        prop_assert!(r.end <= LIMIT, "past the limit {r:?}");
    }
    for w in ranges.windows(2) {
        prop_assert!(
            w[0].end < w[1].start,
            "unsorted, overlapping or adjacent {w:?}"
        );
    }
    Ok(())
}

fn pages(start: u64, end: u64) -> impl Iterator<Item = u64> {
    (start / PAGE..end.div_ceil(PAGE)).map(|p| p * PAGE)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn memory_maps_normalise_to_disjoint_sorted_aligned_ranges(
        regions in prop::collection::vec(region(), 0..40)
    ) {
        let map = normalise::<N>(regions.iter().copied(), LIMIT);
        well_formed(map.usable.ranges())?;
        well_formed(map.ram.ranges())?;
        for r in map.usable.ranges() {
            prop_assert!(map.ram.contains(r.start, r.end), "usable {r:?} not in RAM");
        }
        // Nothing that another region claims is usable; nothing reserved is RAM.
        for &(start, end, k) in &regions {
            if end <= start {
                continue;
            }
            let (s, e) = (start & !(PAGE - 1), end.div_ceil(PAGE).saturating_mul(PAGE).min(LIMIT));
            if k != Kind::Usable && s < e {
                prop_assert!(!map.usable.overlaps(s, e), "{k:?} {start:#x}-{end:#x} is usable");
            }
            if k == Kind::Reserved && s < e {
                prop_assert!(!map.ram.overlaps(s, e), "reserved {start:#x}-{end:#x} is RAM");
            }
        }
        // With nothing dropped, every whole page only usable regions claim is usable.
        if map.usable.dropped_bytes() == 0 {
            for &(start, end, k) in &regions {
                if k != Kind::Usable || end <= start {
                    continue;
                }
                // Only the low regions: the ones near the limit span too many pages.
                if end > 64 * PAGE {
                    continue;
                }
                for p in pages(start.div_ceil(PAGE) * PAGE, end & !(PAGE - 1)) {
                    let claimed = regions.iter().any(|&(s2, e2, k2)| {
                        k2 != Kind::Usable && s2 < e2 && s2 < p + PAGE && p < e2.div_ceil(PAGE).saturating_mul(PAGE)
                    });
                    if !claimed {
                        prop_assert!(map.usable.contains(p, p + PAGE), "page {p:#x} lost");
                    }
                }
            }
        }
    }

    #[test]
    fn more_regions_than_the_table_holds_are_dropped_and_counted(
        gaps in prop::collection::vec(1u64..4, N + 1..4 * N),
        shuffle in any::<u64>(),
    ) {
        // Disjoint, non-adjacent usable regions, more than N of them, in a shuffled order.
        let mut at = 0;
        let mut regions: Vec<(u64, u64, Kind)> = gaps.iter().map(|&g| {
            let r = (at + PAGE, at + PAGE + g * PAGE, Kind::Usable);
            at = r.1;
            r
        }).collect();
        let n = regions.len();
        for i in 0..n {
            regions.swap(i, (shuffle.wrapping_mul(i as u64 + 7) % n as u64) as usize);
        }
        let map = normalise::<N>(regions.iter().copied(), LIMIT);
        well_formed(map.usable.ranges())?;
        prop_assert_eq!(map.usable.ranges().len(), N);
        let total: u64 = regions.iter().map(|r| r.1 - r.0).sum();
        let kept: u64 = map.usable.ranges().iter().map(Range::len).sum();
        prop_assert_eq!(kept + map.usable.dropped_bytes(), total);
    }

    #[test]
    fn arbitrary_madt_bytes_give_distinct_bounded_cpus(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let cpus = madt_cpus::<4>(&bytes);
        let ids = cpus.apic_ids();
        prop_assert!(ids.len() <= 4);
        for (i, a) in ids.iter().enumerate() {
            prop_assert!(!ids[i + 1..].contains(a), "duplicate {a} in {ids:?}");
        }
        prop_assert!(madt_entries(&bytes).count() <= bytes.len() / 2 + 1);
    }

    #[test]
    fn a_madt_of_processors_lists_each_enabled_id_once(
        procs in prop::collection::vec((0u32..12, any::<bool>(), any::<bool>()), 0..24),
        corrupt in prop::option::of((any::<prop::sample::Index>(), 0u8..2)),
    ) {
        // (APIC ID, enabled, as x2APIC entry); optionally one entry's length corrupted.
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for &(id, enabled, x2) in &procs {
            starts.push(bytes.len());
            if x2 {
                bytes.extend([9, 16, 0, 0]);
                bytes.extend(id.to_le_bytes());
                bytes.extend(u32::from(enabled).to_le_bytes());
                bytes.extend(0u32.to_le_bytes());
            } else {
                bytes.extend([0, 8, 0, id as u8]);
                bytes.extend(u32::from(enabled).to_le_bytes());
            }
        }
        let mut cut = procs.len();
        if let (Some((index, bad_len)), false) = (corrupt, procs.is_empty()) {
            let i = index.index(procs.len());
            bytes[starts[i] + 1] = bad_len;
            cut = i;
        }
        let cpus = madt_cpus::<8>(&bytes);
        let mut want: Vec<u32> = Vec::new();
        let (mut dups, mut dropped) = (0, 0);
        for &(id, enabled, _) in &procs[..cut] {
            if !enabled {
                continue;
            }
            if want.contains(&id) {
                dups += 1;
            } else if want.len() < 8 {
                want.push(id);
            } else {
                dropped += 1;
            }
        }
        prop_assert_eq!(cpus.apic_ids(), &want[..]);
        prop_assert_eq!(cpus.duplicates, dups);
        prop_assert_eq!(cpus.dropped, dropped);
        prop_assert_eq!(cpus.malformed, usize::from(cut < procs.len()));
    }

    #[test]
    fn arbitrary_srat_bytes_decode_without_overflow(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for e in srat_entries(&bytes) {
            if let SratEntry::Memory { base, len, .. } = e {
                prop_assert!(len > 0 && base.checked_add(len).is_some());
            }
        }
    }
}

#[test]
fn short_and_overflowing_entries_are_reported_not_used() {
    // A local APIC entry claiming 4 bytes, then an I/O APIC entry.
    let madt = [0, 4, 1, 2, 1, 12, 7, 0, 0, 0, 0xC0, 0xFE, 0, 0, 0, 0];
    let entries: Vec<_> = madt_entries(&madt).collect();
    assert_eq!(
        entries,
        [
            MadtEntry::Malformed { kind: 0, offset: 0 },
            MadtEntry::IoApic {
                id: 7,
                address: 0xFEC0_0000,
                gsi_base: 0
            }
        ]
    );
    let mut srat = vec![1u8, 40];
    srat.extend([0u8; 6]);
    srat.extend(u64::MAX.to_le_bytes());
    srat.extend(16u64.to_le_bytes());
    srat.extend([0u8; 4]);
    srat.extend(1u32.to_le_bytes());
    srat.extend([0u8; 8]);
    srat.extend([0, 1]);
    let entries: Vec<_> = srat_entries(&srat).collect();
    assert_eq!(
        entries,
        [
            SratEntry::Malformed { kind: 1, offset: 0 },
            SratEntry::Truncated { offset: 40 }
        ]
    );
}
