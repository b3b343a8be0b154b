//! The contiguity figures of a VMA, from its resident blocks: how many physically
//! contiguous chunks its pages form, how few of them hold most of its pages, and how many
//! of its 2 MiB and 1 GiB virtual ranges could each be one huge mapping.
//!
//! A *chunk* is a maximal run of resident pages consecutive in both virtual and physical
//! page number. A virtual page listed by several blocks counts once, at the first listing
//! in (vpn, pfn) order; blocks of zero pages and blocks whose virtual or physical end
//! would pass `u64::MAX` are ignored. Cost: O(n log n) for n blocks (a sort).

use crate::base::addr::{HUGE_1G_ORDER, HUGE_2M_ORDER};
use alloc::vec::Vec;

/// Chunks made room for at once: a scattered VMA has one per block, a placed one few.
const CHUNKS_RESERVED: usize = 1 << 12;

/// Contiguity figures of one VMA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChunkStats {
    /// Resident pages.
    pub resident_pages: u64,
    /// Chunks (maximal runs contiguous virtually and physically).
    pub chunks: u64,
    /// Fewest chunks, largest first, that cover at least 50 % of the resident pages.
    pub chunks_50: u64,
    /// The same for 90 %.
    pub chunks_90: u64,
    /// The same for 99 %.
    pub chunks_99: u64,
    /// 512-page-aligned virtual ranges fully resident inside one chunk whose first frame
    /// is 512-aligned: each could be one 2 MiB mapping.
    pub aligned_2m: u64,
    /// The same for 262144-page (1 GiB) ranges.
    pub aligned_1g: u64,
}

/// A run of `pages` pages from virtual page `vpn` at frames from `pfn`.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    vpn: u64,
    pfn: u64,
    pages: u64,
}

impl Chunk {
    /// Aligned virtual ranges of `n` pages (a power of two) inside the chunk whose first
    /// frame is aligned to `n` too.
    fn aligned(&self, n: u64) -> u64 {
        // Masks and shifts rather than divisions: this runs for every chunk of a report.
        let (mask, shift) = (n - 1, n.trailing_zeros());
        if (self.vpn ^ self.pfn) & mask != 0 {
            return 0;
        }
        let end = self.vpn + self.pages;
        match self.vpn.checked_add(mask).map(|v| v & !mask) {
            Some(first) if first <= end => (end - first) >> shift,
            _ => 0,
        }
    }
}

/// The figures of the resident blocks `(vpn, pfn, pages)`, given in any order.
pub fn chunk_stats(blocks: &[(u64, u64, u64)]) -> ChunkStats {
    let valid = |&(v, p, n): &(u64, u64, u64)| {
        n > 0 && v.checked_add(n).is_some() && p.checked_add(n).is_some()
    };
    // A walk lists valid blocks in order already: copied and sorted only when they are not.
    if blocks.is_sorted() && blocks.iter().all(valid) {
        return stats_of(blocks);
    }
    let mut sorted: Vec<(u64, u64, u64)> = blocks.iter().copied().filter(valid).collect();
    sorted.sort_unstable();
    stats_of(&sorted)
}

/// The figures of `sorted`, valid blocks in (vpn, pfn) order, in one pass that forms each
/// chunk and counts it as it ends.
fn stats_of(sorted: &[(u64, u64, u64)]) -> ChunkStats {
    let mut stats = ChunkStats::default();
    let mut sizes: Vec<u64> = Vec::with_capacity(sorted.len().min(CHUNKS_RESERVED));
    let mut end_chunk = |c: Chunk, stats: &mut ChunkStats| {
        sizes.push(c.pages);
        stats.resident_pages += c.pages;
        stats.aligned_2m += c.aligned(1 << HUGE_2M_ORDER);
        stats.aligned_1g += c.aligned(1 << HUGE_1G_ORDER);
    };
    let mut current: Option<Chunk> = None;
    for &(vpn, pfn, pages) in sorted {
        // Blocks come by start, so the current chunk ends at the highest virtual page
        // taken so far; the pages of this block below it are listed already.
        let taken = current.map_or(vpn, |c| (c.vpn + c.pages).max(vpn));
        let end = vpn + pages;
        if taken >= end {
            continue;
        }
        let (vpn, pfn, pages) = (taken, pfn + (taken - vpn), end - taken);
        match &mut current {
            Some(c) if c.vpn + c.pages == vpn && c.pfn + c.pages == pfn => c.pages += pages,
            current => {
                if let Some(done) = current.replace(Chunk { vpn, pfn, pages }) {
                    end_chunk(done, &mut stats);
                }
            }
        }
    }
    if let Some(done) = current {
        end_chunk(done, &mut stats);
    }
    stats.chunks = sizes.len() as u64;
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    [stats.chunks_50, stats.chunks_90, stats.chunks_99] =
        covering(&sizes, stats.resident_pages, [50, 90, 99]);
    stats
}

/// For each of `percents` (ascending), the fewest of `sizes` (largest first) whose sum
/// is at least that share of `total`, in one pass.
fn covering(sizes: &[u64], total: u64, percents: [u64; 3]) -> [u64; 3] {
    let need = percents.map(|p| u128::from(total) * u128::from(p));
    let mut out = [sizes.len() as u64; 3];
    let mut next = 0;
    let mut sum = 0u128;
    for (i, &s) in sizes.iter().enumerate() {
        while next < 3 && sum >= need[next] {
            out[next] = i as u64;
            next += 1;
        }
        if next == 3 {
            break;
        }
        sum += u128::from(s) * 100;
    }
    out
}

#[cfg(test)]
mod tests;
