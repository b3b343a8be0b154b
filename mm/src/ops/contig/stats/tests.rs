//! Unit and property tests of the contiguity figures.

use super::*;
use alloc::vec;
use proptest::prelude::*;

const M2: u64 = 512;
const G1: u64 = 262144;

#[test]
fn nothing_resident_gives_zeros() {
    assert_eq!(chunk_stats(&[]), ChunkStats::default());
    assert_eq!(chunk_stats(&[(5, 5, 0)]), ChunkStats::default());
}

#[test]
fn chunks_join_only_when_both_sides_are_consecutive() {
    // Virtually consecutive but physically not, then a physical continuation of the
    // first block further on virtually.
    let s = chunk_stats(&[(M2, 3 * M2, M2), (0, 0, M2), (4 * M2, M2, M2)]);
    assert_eq!((s.resident_pages, s.chunks), (3 * M2, 3));
    assert_eq!(s.aligned_2m, 3);
    let s = chunk_stats(&[(0, 7, 1), (1, 8, 1), (2, 9, 1), (3, 20, 1)]);
    assert_eq!(
        (s.chunks, s.chunks_50, s.chunks_90, s.aligned_2m),
        (2, 1, 2, 0)
    );
}

#[test]
fn coverage_counts_take_the_largest_chunks_first() {
    // Chunks of 5, 50, 10, 30 and 5 pages, each at a different physical offset.
    let s = chunk_stats(&[
        (0, 1000, 5),
        (100, 2000, 50),
        (200, 3000, 10),
        (300, 4000, 30),
        (400, 5000, 5),
    ]);
    assert_eq!(s.resident_pages, 100);
    assert_eq!(
        (s.chunks, s.chunks_50, s.chunks_90, s.chunks_99),
        (5, 1, 3, 5)
    );
}

#[test]
fn a_gigabyte_of_2m_blocks_is_one_aligned_1g_range() {
    let blocks: Vec<_> = (0..G1 / M2)
        .map(|i| (G1 + i * M2, 3 * G1 + i * M2, M2))
        .collect();
    let s = chunk_stats(&blocks);
    assert_eq!((s.chunks, s.aligned_2m, s.aligned_1g), (1, 512, 1));
    // Off by one 2 MiB block physically: still 2 MiB-aligned, no longer 1 GiB-aligned.
    let shifted: Vec<_> = blocks.iter().map(|&(v, p, n)| (v, p + M2, n)).collect();
    let s = chunk_stats(&shifted);
    assert_eq!((s.chunks, s.aligned_2m, s.aligned_1g), (1, 512, 0));
}

#[test]
fn overlapping_and_wrapping_blocks_count_once_or_not_at_all() {
    let s = chunk_stats(&[(0, 100, 8), (4, 500, 8), (2, 102, 1), (u64::MAX, 0, 2)]);
    // Pages 0..8 at 100..108, then 8..12 at 504..508.
    assert_eq!((s.resident_pages, s.chunks), (12, 2));
    let s = chunk_stats(&[(0, u64::MAX - 1, 4)]);
    assert_eq!(s, ChunkStats::default());
}

/// Page-by-page model over virtual pages `[0, space)`: the frame of each page (first
/// listing in (vpn, pfn) order wins), then every figure by its definition.
fn model(blocks: &[(u64, u64, u64)], space: u64) -> ChunkStats {
    const NONE: u64 = u64::MAX;
    let mut sorted = blocks.to_vec();
    sorted.sort();
    let mut map = vec![NONE; space as usize];
    for (v, p, n) in sorted {
        for i in 0..n {
            let slot = &mut map[(v + i) as usize];
            if *slot == NONE {
                *slot = p + i;
            }
        }
    }
    let mut sizes: Vec<u64> = Vec::new();
    for v in 0..space as usize {
        if map[v] == NONE {
            continue;
        }
        if v > 0 && map[v - 1] != NONE && map[v] == map[v - 1] + 1 {
            *sizes.last_mut().unwrap() += 1;
        } else {
            sizes.push(1);
        }
    }
    let total: u64 = sizes.iter().sum();
    let mut desc = sizes.clone();
    desc.sort_by(|a, b| b.cmp(a));
    let fewest = |pct: u64| {
        let need = (pct * total).div_ceil(100);
        let mut sum = 0;
        desc.iter()
            .take_while(|&&s| {
                let more = sum < need;
                sum += s;
                more
            })
            .count() as u64
    };
    let aligned = |n: u64| {
        (0..space)
            .step_by(n as usize)
            .filter(|&v| {
                let p = map[v as usize];
                p != NONE
                    && p.is_multiple_of(n)
                    && v + n <= space
                    && (0..n).all(|i| map[(v + i) as usize] == p + i)
            })
            .count() as u64
    };
    ChunkStats {
        resident_pages: total,
        chunks: sizes.len() as u64,
        chunks_50: fewest(50),
        chunks_90: fewest(90),
        chunks_99: fewest(99),
        aligned_2m: aligned(M2),
        aligned_1g: aligned(G1),
    }
}

/// Runs of `count` blocks of one size from `sizes`, each run at one physical offset
/// (none, one 2 MiB or 1 GiB page, one frame, or a random one), with maybe one block of
/// the run left out; all inside `[0, space)`, in random order, overlaps allowed.
fn blocks(
    space: u64,
    sizes: &'static [u64],
    max_count: u64,
) -> impl Strategy<Value = Vec<(u64, u64, u64)>> {
    let run = (
        proptest::sample::select(sizes),
        0..space,
        1..=max_count,
        prop_oneof![Just(0u64), Just(M2), Just(G1), Just(1), 0..1u64 << 30],
        proptest::option::of(0..max_count),
    );
    proptest::collection::vec(run, 0..8)
        .prop_map(move |runs| {
            let mut out = Vec::new();
            for (size, at, count, delta, hole) in runs {
                let start = at / size * size;
                let count = count.min((space - start) / size);
                for i in (0..count).filter(|&i| Some(i) != hole) {
                    let v = start + i * size;
                    out.push((v, v + delta, size));
                }
            }
            out
        })
        .prop_shuffle()
}

proptest! {
    /// Small blocks over 8192 virtual pages.
    #[test]
    fn figures_match_a_page_by_page_model(b in blocks(8192, &[1, 3, M2], 40)) {
        prop_assert_eq!(chunk_stats(&b), model(&b, 8192));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Up to 1 GiB blocks, and runs of 2 MiB blocks long enough to fill 1 GiB ranges,
    /// over 4 GiB of virtual pages.
    #[test]
    fn huge_figures_match_a_page_by_page_model(b in blocks(4 * G1, &[1, M2, G1], 600)) {
        prop_assert_eq!(chunk_stats(&b), model(&b, 4 * G1));
    }
}
