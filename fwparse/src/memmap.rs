//! Memory-map normalisation: whatever order, overlaps and count of regions the firmware
//! gives, the result is two sorted lists of disjoint, page-aligned ranges:
//!
//! - `usable`: free RAM the frame allocator may hand out (a region marked usable, minus
//!   anything another region claims: when the firmware contradicts itself, the
//!   non-usable claim wins);
//! - `ram`: every byte that is memory (usable, ACPI tables and NVS, bootloader and
//!   firmware code and data), which the kernel maps write-back; reserved and device
//!   ranges (MMIO holes) are never in it.
//!
//! Both are bounded tables: ranges past their capacity are dropped and counted, never
//! written out of bounds. Ranges ending above `limit` (what the kernel's linear map can
//! reach) are cut there.

/// The page size ranges are aligned to.
pub const PAGE: u64 = 4096;

/// What a memory-map region holds, as far as mapping it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Free RAM.
    Usable,
    /// RAM in use by firmware or the bootloader, or holding ACPI tables: mapped, not
    /// allocated.
    Ram,
    /// Reserved, device memory, defective, or of a type we do not know: neither.
    Reserved,
}

/// The [`Kind`] of an E820 (BIOS) memory type.
pub fn e820_kind(ty: u32) -> Kind {
    match ty {
        1 => Kind::Usable,
        // 3: ACPI reclaimable, 4: ACPI NVS, 7: persistent memory.
        3 | 4 | 7 => Kind::Ram,
        _ => Kind::Reserved,
    }
}

/// The [`Kind`] of a UEFI memory type not already turned into "usable" by the
/// bootloader.
pub fn uefi_kind(ty: u32) -> Kind {
    match ty {
        // Loader code/data, boot services code/data, runtime services code/data,
        // conventional, ACPI reclaim, ACPI NVS, persistent.
        1..=7 | 9 | 10 | 14 => Kind::Ram,
        // 0 reserved, 8 unusable, 11/12 MMIO, 13 PAL code, unknown types.
        _ => Kind::Reserved,
    }
}

/// A physical range `[start, end)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Range {
    /// Bytes covered.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether it covers nothing.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// A sorted list of disjoint, non-adjacent ranges, at most `N` of them.
#[derive(Clone, Debug)]
pub struct RangeSet<const N: usize> {
    ranges: [Range; N],
    len: usize,
    dropped: u64,
}

impl<const N: usize> Default for RangeSet<N> {
    fn default() -> Self {
        RangeSet {
            ranges: [Range::default(); N],
            len: 0,
            dropped: 0,
        }
    }
}

impl<const N: usize> RangeSet<N> {
    /// The ranges, sorted.
    pub fn ranges(&self) -> &[Range] {
        &self.ranges[..self.len]
    }

    /// Bytes that did not fit in the table and were left out.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }

    /// Whether `[start, end)` lies entirely inside one range.
    pub fn contains(&self, start: u64, end: u64) -> bool {
        self.ranges()
            .iter()
            .any(|r| r.start <= start && end <= r.end)
    }

    /// Whether `[start, end)` shares a byte with a range.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.ranges().iter().any(|r| r.start < end && start < r.end)
    }

    /// Add `r`, merging it with the ranges it overlaps or touches. When the table is
    /// full and `r` touches none, the smallest of `r` and the ranges is dropped.
    pub fn insert(&mut self, r: Range) {
        if r.is_empty() {
            return;
        }
        let mut r = r;
        // The ranges r overlaps or touches are a contiguous run [first, last).
        let first = self.ranges().partition_point(|x| x.end < r.start);
        let last = self.ranges().partition_point(|x| x.start <= r.end);
        if first < last {
            r.start = r.start.min(self.ranges[first].start);
            r.end = r.end.max(self.ranges[last - 1].end);
            self.ranges[first] = r;
            self.ranges.copy_within(last..self.len, first + 1);
            self.len -= last - first - 1;
            return;
        }
        if self.len == N {
            let Some((smallest, _)) = self
                .ranges()
                .iter()
                .enumerate()
                .min_by_key(|(_, x)| x.len())
            else {
                self.dropped += r.len();
                return;
            };
            if self.ranges[smallest].len() >= r.len() {
                self.dropped += r.len();
                return;
            }
            self.dropped += self.ranges[smallest].len();
            self.remove_at(smallest);
            return self.insert(r);
        }
        self.ranges.copy_within(first..self.len, first + 1);
        self.ranges[first] = r;
        self.len += 1;
    }

    fn remove_at(&mut self, i: usize) {
        self.ranges.copy_within(i + 1..self.len, i);
        self.len -= 1;
    }

    /// Remove every byte of `cut` from the set. A range split in two when the table is
    /// full loses its smaller piece (counted as dropped).
    pub fn remove(&mut self, cut: Range) {
        if cut.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.len {
            let r = self.ranges[i];
            if r.end <= cut.start || cut.end <= r.start {
                i += 1;
                continue;
            }
            let left = Range {
                start: r.start,
                end: cut.start.max(r.start),
            };
            let right = Range {
                start: cut.end.min(r.end),
                end: r.end,
            };
            match (left.is_empty(), right.is_empty()) {
                (true, true) => {
                    self.remove_at(i);
                    continue;
                }
                (false, true) => self.ranges[i] = left,
                (true, false) => self.ranges[i] = right,
                (false, false) if self.len < N => {
                    self.ranges[i] = left;
                    self.ranges.copy_within(i + 1..self.len, i + 2);
                    self.ranges[i + 1] = right;
                    self.len += 1;
                    i += 1;
                }
                (false, false) => {
                    let (keep, lose) = if left.len() >= right.len() {
                        (left, right)
                    } else {
                        (right, left)
                    };
                    self.ranges[i] = keep;
                    self.dropped += lose.len();
                }
            }
            i += 1;
        }
    }
}

/// The normalised memory map.
#[derive(Clone, Debug, Default)]
pub struct MemoryMap<const N: usize> {
    /// Free RAM for the frame allocator, page-aligned inward.
    pub usable: RangeSet<N>,
    /// All RAM to map write-back, page-aligned outward within what no reserved region
    /// claims.
    pub ram: RangeSet<N>,
    /// Regions given with `end <= start` (ignored).
    pub inverted: usize,
}

/// `x` rounded up to a page, or the last page boundary when that overflows.
fn round_up(x: u64) -> u64 {
    x.checked_next_multiple_of(PAGE).unwrap_or(!(PAGE - 1))
}

/// Normalise `regions` (start, end, kind; any order, overlaps allowed), keeping
/// addresses below `limit`.
pub fn normalise<const N: usize>(
    regions: impl IntoIterator<Item = (u64, u64, Kind)> + Clone,
    limit: u64,
) -> MemoryMap<N> {
    let mut map = MemoryMap::<N>::default();
    let limit = limit & !(PAGE - 1);
    let clip = |start: u64, end: u64| Range {
        start: start.min(limit),
        end: end.min(limit),
    };
    for (start, end, kind) in regions.clone() {
        if end <= start {
            map.inverted += 1;
            continue;
        }
        match kind {
            Kind::Usable => {
                let r = clip(round_up(start), end & !(PAGE - 1));
                map.usable.insert(r);
                map.ram.insert(r);
            }
            Kind::Ram => map.ram.insert(clip(start & !(PAGE - 1), round_up(end))),
            Kind::Reserved => {}
        }
    }
    for (start, end, kind) in regions {
        if end <= start {
            continue;
        }
        // A non-usable claim takes its bytes out of the usable set; a reserved one
        // takes the pages it touches out of RAM as well.
        match kind {
            Kind::Usable => {}
            Kind::Ram => map.usable.remove(clip(start & !(PAGE - 1), round_up(end))),
            Kind::Reserved => {
                let r = clip(start & !(PAGE - 1), round_up(end));
                map.usable.remove(r);
                map.ram.remove(r);
            }
        }
    }
    map
}
