//! The choice of the physical window a VMA is anchored to: its page at virtual page `vpn`
//! belongs at frame `pfn_start + (vpn - vpn_start)`, and [`choose`] picks `pfn_start`.
//!
//! # Cost
//!
//! For the VMA's pages `[vpn_start, vpn_end)` (`l` pages), the window of a candidate
//! `pfn_start` is `[pfn_start, pfn_start + l)`. It is infeasible when it leaves the
//! [`PhysView`] or holds a [`FrameClass::Claimed`] frame. Otherwise its cost is the sum
//! over the VMA's resident [`Unit`]s: 0 for a unit already at its target `t = pfn_start +
//! (vpn - vpn_start)`; [`BLOCK`] per page for a misplaced pinned unit; else the weights of
//! the target frames `[t, t + pages)`: 1 free, 2 movable, [`BLOCK`] blocked. (A unit's own
//! frames weigh as movable when they are another unit's target.) The candidates are the
//! `pfn_start ≡ vpn_start (mod align)` whose window lies in the view; [`choose`] returns
//! the cheapest feasible one, the lowest on a tie.
//!
//! # Search
//!
//! With `n` frames in the view, `u` units, `k ≤ (n - l) / align + 1` candidates and `p`
//! pieces of the cover (the unpinned units' pages as long runs and 64-page words, `p
//! ≤ min(3u, 3l / 128 + 1)`):
//!
//! 1. The lower bound `lb` of a candidate counts each page not in place as 1, or
//!    [`BLOCK`] if pinned; the pages in place come from a histogram of `pfn - (vpn -
//!    vpn_start)` over the units, so only the candidates where some unit is in place
//!    (at most `u`) have a bound below the common one. O(u log u).
//! 2. A window holding only free frames costs exactly its `lb`, which seeds the best
//!    with the cheapest free window: one with units in place if there is one (each
//!    checked in O(1) with the rank tables), else the lowest free one, looked for from
//!    the bottom up. O(u + k), and only up to the lowest free window when units are in
//!    place in none. The windows that look counts are kept for step 3, which then does
//!    not count them again (in memory without a free window, every candidate's).
//! 3. The candidates are then taken by increasing (`lb`, `pfn_start`), stopping as soon
//!    as the next `lb` cannot beat the best. Each is checked in O(1) against a second
//!    bound (pigeonhole: at least `covered - free` of the covered pages land on non-free
//!    frames of the window, and at least `covered - free - movable` on blocked ones), then
//!    summed exactly piece by piece, each piece in O(1), giving up as soon as the partial
//!    sum exceeds what could still beat the best. O(p) per candidate summed.
//!
//! Worst case O(u log u + k·p) time, when no window is free, the bounds do not prune and
//! the covered pages are scattered over the whole VMA (`p ≈ l / 64`); e.g. 4 Mi frames,
//! `l` = 2 Mi pages, align 512: 4096 candidates × 32768 words (a host test runs a case
//! like it, 1563 × 3125, in under 50 ms optimised). In practice a free window, a dense
//! cover (few long runs) or windows uniformly movable or blocked let the bounds settle
//! nearly every candidate in O(1), close to O(u log u + k). Memory O(u + k) besides
//! the view.

mod bits;
mod cover;
mod view;

pub use view::{FrameClass, Painter, PhysView};

use alloc::vec::Vec;
use cover::Cover;
use view::Layer;

/// The weight of a blocked target frame and, per page, of a misplaced pinned unit: a
/// window that needs one costs more than any window of up to `2^19` pages that needs
/// none (a page weighs at most 2 otherwise).
pub const BLOCK: u64 = 1 << 20;

/// One resident block of the VMA: `pages` pages (1, 512 or 262144) from virtual page
/// `vpn` at frames from `pfn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Unit {
    /// First virtual page.
    pub vpn: u64,
    /// First frame.
    pub pfn: u64,
    /// Pages.
    pub pages: u64,
    /// Whether the block can never move.
    pub pinned: bool,
}

/// The chosen window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Choice {
    /// The frame the VMA's first page belongs at.
    pub pfn_start: u64,
    /// The window's cost.
    pub cost: u64,
    /// Pages already at their target.
    pub in_place: u64,
}

/// The cheapest feasible window for the VMA's pages `[vpn_start, vpn_end)` with resident
/// `units` (any order), among the starts `≡ vpn_start (mod align)`; the lowest start on
/// a tie. `None` when no candidate is feasible, or for nonsense arguments: an empty or
/// inverted range, `align` not a power of two, a unit of zero pages, outside the range or
/// overlapping another.
pub fn choose(
    view: &PhysView,
    units: &[Unit],
    vpn_start: u64,
    vpn_end: u64,
    align: u64,
) -> Option<Choice> {
    choose_with(view, units, vpn_start, vpn_end, align, Need::Feasible)
}

/// Which windows a search may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Any window without claimed frames ([`choose`]).
    Feasible,
    /// Only windows without claimed or blocked frames: not only none at a resident
    /// unit's target, none at all. A window that is to become one huge leaf (a 1 GiB
    /// one) needs every frame of it, the ones pages faulted in later will take included.
    Clean,
}

/// [`choose`] among the windows `need` allows.
pub fn choose_with(
    view: &PhysView,
    units: &[Unit],
    vpn_start: u64,
    vpn_end: u64,
    align: u64,
    need: Need,
) -> Option<Choice> {
    if vpn_end <= vpn_start || !align.is_power_of_two() {
        return None;
    }
    let len = vpn_end - vpn_start;
    let units = checked(units, vpn_start, vpn_end)?;
    let candidates = Candidates::new(view, vpn_start, len, align)?;
    let placed = placed(view, &units, vpn_start, &candidates);
    let (count, base) = (candidates.count, units.iter().map(misplaced_bound).sum());
    let mut search = Search {
        view,
        cover: Cover::new(&units, vpn_start),
        candidates,
        base,
        need,
        best: None,
        scanned: Vec::new(),
    };
    search.seed_with_free_windows(&placed);
    // By increasing (lower bound, start): first the candidates where units are in place,
    // then all the others, whose bound is `base`.
    let mut by_bound: Vec<(u64, u64, u64, u64)> = placed
        .iter()
        .map(|p| (base - p.saving, p.k, p.extras, p.in_place))
        .collect();
    by_bound.sort_unstable();
    let mut with_units = placed.iter().map(|p| p.k).peekable();
    let others = (0..count)
        .filter(move |&k| with_units.next_if_eq(&k).is_none())
        .map(|k| (base, k, 0, 0));
    for (lb, k, extras, in_place) in by_bound.into_iter().chain(others) {
        if !search.consider(k, lb, extras, in_place) {
            break;
        }
    }
    search.best.map(|(cost, k, in_place)| Choice {
        pfn_start: search.candidates.start(k),
        cost,
        in_place,
    })
}

/// The units sorted by vpn, if each has pages, lies in `[vpn_start, vpn_end)` and
/// overlaps no other.
fn checked(units: &[Unit], vpn_start: u64, vpn_end: u64) -> Option<Vec<Unit>> {
    let mut sorted = units.to_vec();
    sorted.sort_unstable_by_key(|u| u.vpn);
    let mut free_from = vpn_start;
    for u in &sorted {
        let end = u.vpn.checked_add(u.pages)?;
        if u.pages == 0 || u.vpn < free_from || end > vpn_end {
            return None;
        }
        free_from = end;
    }
    Some(sorted)
}

/// The least a unit can cost when it is not in place.
fn misplaced_bound(u: &Unit) -> u64 {
    if u.pinned {
        BLOCK * u.pages
    } else {
        u.pages
    }
}

/// The candidate starts `first + k * align` for `k < count`.
struct Candidates {
    first: u64,
    count: u64,
    align: u64,
    len: u64,
}

impl Candidates {
    /// The starts `≡ vpn_start (mod align)` whose window of `len` frames lies in the view;
    /// `None` if there is none.
    fn new(view: &PhysView, vpn_start: u64, len: u64, align: u64) -> Option<Candidates> {
        let (lo, hi) = (view.lo().0, view.hi().0);
        let phase = vpn_start & (align - 1);
        let mut first = (lo & !(align - 1)) | phase;
        if first < lo {
            first = first.checked_add(align)?;
        }
        let last = hi.checked_sub(len)?;
        (first <= last).then(|| Candidates {
            first,
            count: (last - first) / align + 1,
            align,
            len,
        })
    }

    /// The start of candidate `k`.
    fn start(&self, k: u64) -> u64 {
        self.first + k * self.align
    }

    /// The candidate whose start is `pfn_start`, if any.
    fn index(&self, pfn_start: u64) -> Option<u64> {
        let off = pfn_start.checked_sub(self.first)?;
        // `align` is a power of two: a mask and a shift, not divisions, for every unit.
        let k = off >> self.align.trailing_zeros();
        (off & (self.align - 1) == 0 && k < self.count).then_some(k)
    }
}

/// A candidate where some units are in place.
#[derive(Clone, Copy, Debug)]
struct Placed {
    /// The candidate.
    k: u64,
    /// Pages in place.
    in_place: u64,
    /// What they take off the common lower bound.
    saving: u64,
    /// The extra weight (as in [`Cover::extras`]) of the frames of its unpinned units
    /// in place: the cover counts them, their cost is 0.
    extras: u64,
}

/// The candidates where some units are in place, by candidate.
fn placed(view: &PhysView, units: &[Unit], vpn_start: u64, cands: &Candidates) -> Vec<Placed> {
    let mut hits: Vec<(u64, &Unit)> = units
        .iter()
        .filter_map(|u| {
            let start = u.pfn.checked_sub(u.vpn - vpn_start)?;
            Some((cands.index(start)?, u))
        })
        .collect();
    hits.sort_unstable_by_key(|&(k, _)| k);
    let mut out: Vec<Placed> = Vec::new();
    for (k, u) in hits {
        let extras = if u.pinned {
            0
        } else {
            let (s, e) = (u.pfn, u.pfn + u.pages);
            view.count(Layer::Movable, s, e) + (BLOCK - 1) * view.count(Layer::Blocked, s, e)
        };
        if out.last().is_none_or(|p| p.k != k) {
            out.push(Placed {
                k,
                in_place: 0,
                saving: 0,
                extras: 0,
            });
        }
        if let Some(p) = out.last_mut() {
            p.in_place += u.pages;
            p.saving += misplaced_bound(u);
            p.extras += extras;
        }
    }
    out
}

/// The state of one [`choose`].
struct Search<'v> {
    view: &'v PhysView,
    cover: Cover,
    candidates: Candidates,
    /// The lower bound of a candidate where no unit is in place.
    base: u64,
    /// Which windows it may take.
    need: Need,
    /// (cost, candidate, pages in place) of the best so far.
    best: Option<(u64, u64, u64)>,
    /// The windows of candidates `0..scanned.len()` as [`window`](Self::window) counts
    /// them, kept by the look for the lowest free window: when memory has none, it
    /// counts every candidate once, and the candidates' evaluation then reads them here.
    scanned: Vec<(u64, u64, u64)>,
}

impl Search<'_> {
    /// Whether a candidate `k` of cost `cost` would beat the best so far.
    fn beats(&self, cost: u64, k: u64) -> bool {
        self.best.is_none_or(|(c, bk, _)| (cost, k) < (c, bk))
    }

    /// Movable, blocked and claimed frames in the window of candidate `k`, a layer at a
    /// time: once the frames counted fill the window the layers left have none (memory
    /// full of others' pages or of the kernel's costs one or two counts, not three).
    fn window(&self, k: u64) -> (u64, u64, u64) {
        if let Some(&w) = usize::try_from(k).ok().and_then(|i| self.scanned.get(i)) {
            return w;
        }
        let (s, len) = (self.candidates.start(k), self.candidates.len);
        let count = |layer| self.view.count(layer, s, s + len);
        let movable = count(Layer::Movable);
        if movable == len {
            return (movable, 0, 0);
        }
        let blocked = count(Layer::Blocked);
        if movable + blocked == len {
            return (movable, blocked, 0);
        }
        (movable, blocked, count(Layer::Claimed))
    }

    /// Whether the window of candidate `k` is all free: the layers asked one at a time,
    /// movable first (the one that most often is not empty), so that a window that is
    /// not free mostly costs two rank reads instead of six.
    fn is_free(&self, k: u64) -> bool {
        let s = self.candidates.start(k);
        let e = s + self.candidates.len;
        [Layer::Movable, Layer::Blocked, Layer::Claimed]
            .into_iter()
            .all(|layer| self.view.count(layer, s, e) == 0)
    }

    /// Take the cheapest all-free window, at its exact cost: its lower bound, `base -
    /// saving` where units are in place and `base` elsewhere. A saving is never zero, so
    /// a free window with units in place beats every free window without; only when
    /// there is none is the lowest free window looked for, from the bottom up, keeping
    /// the windows it counts on the way in `scanned`.
    fn seed_with_free_windows(&mut self, placed: &[Placed]) {
        for p in placed {
            let cost = self.base - p.saving;
            if self.beats(cost, p.k) && self.is_free(p.k) {
                self.best = Some((cost, p.k, p.in_place));
            }
        }
        if self.best.is_some() {
            return;
        }
        for k in 0..self.candidates.count {
            let w = self.window(k);
            self.scanned.push(w);
            if w == (0, 0, 0) {
                self.best = Some((self.base, k, 0));
                return;
            }
        }
    }

    /// Evaluate candidate `k` of lower bound `lb`, whose units in place have `in_place`
    /// pages with frames of extra weight `extras`. Returns false when `lb` cannot beat
    /// the best, so neither can any later candidate.
    fn consider(&mut self, k: u64, lb: u64, extras: u64, in_place: u64) -> bool {
        if !self.beats(lb, k) {
            return false;
        }
        let (movable, blocked, claimed) = self.window(k);
        let unclean = self.need == Need::Clean && blocked > 0;
        if claimed > 0 || unclean || (movable, blocked) == (0, 0) {
            // Infeasible, or free: the seed took it.
            return true;
        }
        let free = self.candidates.len - movable - blocked;
        let covered = self.cover.pages;
        let forced =
            covered.saturating_sub(free) + (BLOCK - 2) * covered.saturating_sub(free + movable);
        if !self.beats(lb + forced.saturating_sub(extras), k) {
            return true;
        }
        // The largest cost that still beats the best (`lb` is at most that).
        let limit = match self.best {
            None => u64::MAX,
            Some((c, bk, _)) if k < bk => c,
            Some((c, _, _)) => c - 1,
        };
        let start = self.candidates.start(k);
        let budget = (limit - lb).saturating_add(extras);
        if let Some(sum) = self.cover.extras(self.view, start, budget) {
            self.best = Some((lb + sum - extras, k, in_place));
        }
        true
    }
}

#[cfg(test)]
mod tests;
