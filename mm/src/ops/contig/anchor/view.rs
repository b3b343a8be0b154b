//! A snapshot of the class of every frame of `[lo, hi)` ([`FrameClass`]) for the choice
//! of an anchor window: one rank bitmap per class other than free (a free frame is in
//! none), so that the frames of a class in any range are counted in O(1) and 64
//! consecutive frames are read in two word loads. A bitmap keeps bits only for the
//! 16 MiB groups of frames where its class is mixed with others (see [`super::bits`]):
//! building a view of mostly free memory, or of memory in long runs of one class, costs
//! one step per group and per run, not one per 64 frames. Memory: at most 6 bits per
//! frame (3 bitmaps and their rank tables), 3 MiB for a 16 GiB view.

use super::bits::{Bits, BitsBuilder};
use crate::base::addr::Pfn;

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
        let mut frames = (lo.0..hi.0.max(lo.0))
            .map(|p| (p, class(Pfn(p))))
            .peekable();
        // Consecutive frames of one class as one run.
        let runs = core::iter::from_fn(move || {
            let (first, c) = frames.next()?;
            let mut end = first + 1;
            while frames.next_if(|&(_, d)| d == c).is_some() {
                end += 1;
            }
            Some((Pfn(first), Pfn(end), c))
        });
        PhysView::from_runs(lo, hi, runs)
    }

    /// The classes of `[lo, hi)` given as runs `(start, end, class)`: frames in no run are
    /// free, a run overrides the runs before it where they overlap, and the parts of runs
    /// outside `[lo, hi)` are ignored. It costs one step per run and per 64 frames a run
    /// covers, so a snapshot of memory built from its blocks (a block's head says what all
    /// its frames are) never looks at a frame twice nor at each frame of a big block.
    pub fn from_runs(
        lo: Pfn,
        hi: Pfn,
        runs: impl IntoIterator<Item = (Pfn, Pfn, FrameClass)>,
    ) -> PhysView {
        let mut painter = Painter::new(lo, hi);
        for (start, end, class) in runs {
            painter.paint(start, end, class);
        }
        painter.finish()
    }

    /// First frame of the view.
    #[inline]
    pub fn lo(&self) -> Pfn {
        Pfn(self.lo)
    }

    /// One past the last frame of the view.
    #[inline]
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
    #[inline]
    pub(super) fn count(&self, layer: Layer, start: u64, end: u64) -> u64 {
        self.layers[layer as usize].count(start - self.base, end - self.base)
    }

    /// Frames `start..start + 64` (`start` inside the view) of `layer` as bits, `start`
    /// lowest; frames past the view read as not in the layer.
    #[inline]
    pub(super) fn word(&self, layer: Layer, start: u64) -> u64 {
        self.layers[layer as usize].word_at(start - self.base)
    }
}

/// A [`PhysView`] being built run by run, as [`PhysView::from_runs`] describes: a run
/// continuing the one before it with the same class only extends it, and a run past
/// every frame painted so far sets its own layer only.
pub struct Painter {
    lo: u64,
    hi: u64,
    base: u64,
    layers: [BitsBuilder; 3],
    /// Past `painted` no run has set a bit yet: a run there only sets its own layer (a
    /// free run costs nothing); before it, the other layers are cleared first.
    painted: u64,
    /// The run not yet applied, extended while the next ones continue it.
    pending: Option<(u64, u64, FrameClass)>,
}

impl Painter {
    /// An empty view of `[lo, hi)`, every frame free (an inverted range is empty).
    pub fn new(lo: Pfn, hi: Pfn) -> Painter {
        let (lo, hi) = (lo.0, hi.0.max(lo.0));
        let base = lo & !63;
        let layer = || BitsBuilder::new(hi - base);
        Painter {
            lo,
            hi,
            base,
            layers: [layer(), layer(), layer()],
            painted: lo,
            pending: None,
        }
    }

    /// Paint `[start, end)` (clipped to the view) as `class`, over what was painted.
    #[inline]
    pub fn paint(&mut self, start: Pfn, end: Pfn, class: FrameClass) {
        let (start, end) = (start.0.max(self.lo), end.0.min(self.hi));
        if start >= end {
            return;
        }
        match &mut self.pending {
            Some((_, e, c)) if *e == start && *c == class => *e = end,
            pending => {
                if let Some((s, e, c)) = pending.replace((start, end, class)) {
                    self.apply(s, e, c);
                }
            }
        }
    }

    /// The view painted.
    pub fn finish(mut self) -> PhysView {
        if let Some((s, e, c)) = self.pending.take() {
            self.apply(s, e, c);
        }
        PhysView {
            lo: self.lo,
            hi: self.hi,
            base: self.base,
            layers: self.layers.map(BitsBuilder::finish),
        }
    }

    /// Paint `[start, end)`, inside the view and not empty.
    fn apply(&mut self, start: u64, end: u64, class: FrameClass) {
        let layer = match class {
            FrameClass::Free => None,
            FrameClass::Movable => Some(Layer::Movable),
            FrameClass::Blocked => Some(Layer::Blocked),
            FrameClass::Claimed => Some(Layer::Claimed),
        };
        let (i, j) = (start - self.base, end - self.base);
        if start >= self.painted {
            if let Some(l) = layer {
                let bits = &mut self.layers[l as usize];
                if !bits.set_in_word(i, j) {
                    bits.fill(i, j, true);
                }
            }
        } else {
            let cleared = end.min(self.painted) - self.base;
            for (l, bits) in self.layers.iter_mut().enumerate() {
                if layer.is_some_and(|x| x as usize == l) {
                    bits.fill(i, j, true);
                } else {
                    bits.fill(i, cleared, false);
                }
            }
        }
        self.painted = self.painted.max(end);
    }
}
