//! A snapshot of the class of every frame of `[lo, hi)` ([`FrameClass`]) for the choice
//! of an anchor window: one rank bitmap per class other than free (a free frame is in
//! none), so that the frames of a class in any range are counted in O(1) and 64
//! consecutive frames are read in two word loads. Memory: 6 bits per frame (3 bitmaps
//! and their rank tables), 3 MiB for a 16 GiB view.

use super::bits::Bits;
use crate::base::addr::Pfn;
use alloc::vec;

/// What a frame is to a window that would contain it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameClass {
    /// A free frame.
    Free,
    /// An in-use movable user frame: exchange or migration can displace it.
    Movable,
    /// Unmovable, pinned, kernel or reserved.
    Blocked,
    /// Inside another VMA's claimed window: a window may contain none.
    Claimed,
}

/// The classes stored as bitmaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layer {
    /// [`FrameClass::Movable`].
    Movable,
    /// [`FrameClass::Blocked`].
    Blocked,
    /// [`FrameClass::Claimed`].
    Claimed,
}

/// The classes of the frames `[lo, hi)`.
#[derive(Clone, Debug)]
pub struct PhysView {
    lo: u64,
    hi: u64,
    /// `lo` rounded down to 64: bit `i` of a layer is frame `base + i`.
    base: u64,
    /// Movable, blocked and claimed frames, by [`Layer`].
    layers: [Bits; 3],
}

impl PhysView {
    /// The classes of `[lo, hi)` as `class` tells them, asked once per frame in order (an
    /// inverted range is an empty view).
    pub fn new(lo: Pfn, hi: Pfn, mut class: impl FnMut(Pfn) -> FrameClass) -> PhysView {
        let (lo, hi) = (lo.0, hi.0.max(lo.0));
        let base = lo & !63;
        let words = (hi - base).div_ceil(64) as usize;
        let mut layers = [vec![0u64; words], vec![0u64; words], vec![0u64; words]];
        for pfn in lo..hi {
            let layer = match class(Pfn(pfn)) {
                FrameClass::Free => continue,
                FrameClass::Movable => Layer::Movable,
                FrameClass::Blocked => Layer::Blocked,
                FrameClass::Claimed => Layer::Claimed,
            };
            let i = pfn - base;
            layers[layer as usize][(i / 64) as usize] |= 1 << (i % 64);
        }
        PhysView {
            lo,
            hi,
            base,
            layers: layers.map(Bits::new),
        }
    }

    /// First frame of the view.
    pub fn lo(&self) -> Pfn {
        Pfn(self.lo)
    }

    /// One past the last frame of the view.
    pub fn hi(&self) -> Pfn {
        Pfn(self.hi)
    }

    /// The class of `pfn`; frames outside the view are [`FrameClass::Blocked`].
    pub fn class(&self, pfn: Pfn) -> FrameClass {
        if pfn.0 < self.lo || pfn.0 >= self.hi {
            return FrameClass::Blocked;
        }
        let i = pfn.0 - self.base;
        let [movable, blocked, claimed] = &self.layers;
        if movable.get(i) {
            FrameClass::Movable
        } else if blocked.get(i) {
            FrameClass::Blocked
        } else if claimed.get(i) {
            FrameClass::Claimed
        } else {
            FrameClass::Free
        }
    }

    /// Frames of `layer` in `[start, end)`, a range inside the view.
    pub(super) fn count(&self, layer: Layer, start: u64, end: u64) -> u64 {
        self.layers[layer as usize].count(start - self.base, end - self.base)
    }

    /// Frames `start..start + 64` (`start` inside the view) of `layer` as bits, `start`
    /// lowest; frames past the view read as not in the layer.
    pub(super) fn word(&self, layer: Layer, start: u64) -> u64 {
        self.layers[layer as usize].word_at(start - self.base)
    }
}
