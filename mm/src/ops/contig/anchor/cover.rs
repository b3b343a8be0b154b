//! The virtual pages that a VMA's movable (unpinned) units cover, packed for summing the
//! weights of their target frames at a candidate window: runs of at least [`RUN`]
//! consecutive pages, each summed in O(1) from the view's rank tables, and 64-page words
//! (bit masks) for the rest, each summed with two word loads and two popcounts per class.
//! A cover of `u` units over `l` pages has at most `l / RUN` runs and at most
//! `min(2u, l / 64 + 1)` words.
//!
//! Pinned units are not covered: their cost does not depend on the target frames.

use super::view::{Layer, PhysView};
use super::{Unit, BLOCK};
use alloc::vec::Vec;

/// Consecutive covered pages from which a run is kept as a run rather than as words.
pub(super) const RUN: u64 = 128;

/// The covered pages, as offsets from the VMA's first page.
#[derive(Clone, Debug, Default)]
pub(super) struct Cover {
    /// Covered pages.
    pub(super) pages: u64,
    /// (first offset, pages) of the long runs.
    runs: Vec<(u64, u64)>,
    /// (offset, a multiple of 64; bit `b` covers offset + `b`) of the other pages.
    words: Vec<(u64, u64)>,
}

impl Cover {
    /// The cover of the unpinned `units` (sorted by vpn, disjoint, inside the VMA that
    /// starts at `vpn_start`).
    pub(super) fn new(units: &[Unit], vpn_start: u64) -> Cover {
        let mut cover = Cover::default();
        let mut run: Option<(u64, u64)> = None;
        for u in units.iter().filter(|u| !u.pinned) {
            let (s, e) = (u.vpn - vpn_start, u.vpn - vpn_start + u.pages);
            run = match run {
                Some((rs, re)) if re == s => Some((rs, e)),
                Some(done) => {
                    cover.add(done);
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        if let Some(done) = run {
            cover.add(done);
        }
        cover
    }

    /// Add the covered offsets `[s, e)`, after every offset added so far.
    fn add(&mut self, (s, e): (u64, u64)) {
        self.pages += e - s;
        if e - s >= RUN {
            self.runs.push((s, e - s));
            return;
        }
        for w in (s / 64)..=((e - 1) / 64) {
            let (from, to) = (s.max(w * 64) - w * 64, e.min(w * 64 + 64) - w * 64);
            let mask = (u64::MAX >> (64 - (to - from))) << from;
            match self.words.last_mut() {
                Some((at, m)) if *at == w * 64 => *m |= mask,
                _ => self.words.push((w * 64, mask)),
            }
        }
    }

    /// The extra weight (above 1 a frame: 1 for movable, `BLOCK - 1` for blocked) of the
    /// frames that the covered pages target in the window starting at `pfn_start` (a
    /// feasible window inside the view), or `None` as soon as it exceeds `budget`.
    pub(super) fn extras(&self, view: &PhysView, pfn_start: u64, budget: u64) -> Option<u64> {
        let mut sum = 0u64;
        for &(at, pages) in &self.runs {
            let (s, e) = (pfn_start + at, pfn_start + at + pages);
            sum +=
                view.count(Layer::Movable, s, e) + (BLOCK - 1) * view.count(Layer::Blocked, s, e);
            if sum > budget {
                return None;
            }
        }
        for &(at, mask) in &self.words {
            let f = pfn_start + at;
            let movable = view.word(Layer::Movable, f) & mask;
            let blocked = view.word(Layer::Blocked, f) & mask;
            sum += u64::from(movable.count_ones());
            if blocked != 0 {
                sum += (BLOCK - 1) * u64::from(blocked.count_ones());
            }
            if sum > budget {
                return None;
            }
        }
        Some(sum)
    }
}
