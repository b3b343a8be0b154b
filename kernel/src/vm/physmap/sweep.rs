//! One pass over physical memory in address order, classifying every frame from 0 to
//! the end of RAM: the gaps between RAM ranges are no RAM; inside a range the frame
//! table is read a block at a time (a block's head says free or allocated, its order how
//! far the block goes, its pin count whether it is pinned), and an allocated block is
//! split between the labelled VMAs' frames and the kernel's. No lock is taken: see the
//! module doc of [`super`].

use super::cells::Class;
use fwparse::memmap::Range;
use mm::base::addr::{Pfn, MAX_ORDER, PAGE_SIZE};
use mm::frame::meta::{FrameFlags, FrameState, FrameTable};

/// Frames `[start, end)` mapped by the labelled VMA of letter index `label`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owned {
    /// First frame.
    pub start: u64,
    /// One past the last frame.
    pub end: u64,
    /// The letter index.
    pub label: u8,
}

/// Classify frames `0..frames`, handing each run of one class to `emit(count, class)`
/// in address order, without gaps. `ram` is sorted and disjoint (bytes), `owned` sorted
/// and disjoint (frames).
pub fn sweep(
    table: FrameTable<'_>,
    ram: &[Range],
    owned: &[Owned],
    frames: u64,
    emit: &mut impl FnMut(u64, Class),
) {
    let mut at = 0;
    let mut next_owned = 0;
    for r in ram {
        let start = (r.start / PAGE_SIZE).max(at).min(frames);
        let end = r.end.div_ceil(PAGE_SIZE).min(frames);
        if start > at {
            emit(start - at, Class::NoRam);
        }
        if end > start {
            blocks(table, start, end, owned, &mut next_owned, emit);
        }
        at = at.max(end);
    }
    if frames > at {
        emit(frames - at, Class::NoRam);
    }
}

/// Classify the RAM frames `[start, end)` block by block.
fn blocks(
    table: FrameTable<'_>,
    start: u64,
    end: u64,
    owned: &[Owned],
    next_owned: &mut usize,
    emit: &mut impl FnMut(u64, Class),
) {
    let mut i = start;
    while i < end {
        let block = table
            .head_of(Pfn(i))
            .and_then(|head| Some((head, table.get(head)?)));
        let Some((head, meta)) = block else {
            // Reserved, or beyond the frame table.
            emit(1, Class::Kernel);
            i += 1;
            continue;
        };
        let order = meta.order().min(MAX_ORDER);
        let block_end = (head.0 + (1u64 << order)).clamp(i + 1, end);
        let n = block_end - i;
        if meta.state() == FrameState::Free || meta.flags().contains(FrameFlags::CACHED) {
            emit(n, Class::Free);
        } else if meta.pincount() > 0 {
            emit(n, Class::Pinned);
        } else {
            split(i, block_end, owned, next_owned, emit);
        }
        i = block_end;
    }
}

/// Allocated, unpinned frames `[start, end)`: the labelled VMAs' by letter, the rest
/// the kernel's. `next_owned` is the first owned range that may still matter (calls come
/// in address order).
fn split(
    start: u64,
    end: u64,
    owned: &[Owned],
    next_owned: &mut usize,
    emit: &mut impl FnMut(u64, Class),
) {
    while owned.get(*next_owned).is_some_and(|o| o.end <= start) {
        *next_owned += 1;
    }
    let mut i = start;
    for o in owned[*next_owned..].iter().take_while(|o| o.start < end) {
        let from = o.start.max(i);
        let to = o.end.min(end);
        if from >= to {
            continue;
        }
        if from > i {
            emit(from - i, Class::Kernel);
        }
        emit(to - from, Class::Vma(o.label));
        i = to;
    }
    if end > i {
        emit(end - i, Class::Kernel);
    }
}
