//! Unit and property tests of the anchor choice: hand cases, a proptest against trying
//! every candidate with every unit, and timings of big views.

use super::*;
use crate::base::addr::Pfn;
use alloc::vec;
use proptest::prelude::*;
use std::println;
use std::time::Instant;

/// The weight of one target frame, by the definition.
fn weight(view: &PhysView, pfn: u64) -> u64 {
    match view.class(Pfn(pfn)) {
        FrameClass::Free => 1,
        FrameClass::Movable => 2,
        FrameClass::Blocked => BLOCK,
        FrameClass::Claimed => unreachable!("feasible windows hold no claimed frame"),
    }
}

/// Every candidate, every unit, every frame; with `clean`, only the windows without a
/// blocked frame.
fn brute(
    view: &PhysView,
    units: &[Unit],
    vpn_start: u64,
    vpn_end: u64,
    align: u64,
    clean: bool,
) -> Option<Choice> {
    let len = vpn_end - vpn_start;
    let (lo, hi) = (view.lo().0, view.hi().0);
    let mut best: Option<Choice> = None;
    for c in (lo..(hi + 1).saturating_sub(len)).filter(|c| c % align == vpn_start % align) {
        let taken = |f: u64| match view.class(Pfn(f)) {
            FrameClass::Claimed => true,
            FrameClass::Blocked => clean,
            _ => false,
        };
        if (c..c + len).any(taken) {
            continue;
        }
        let (mut cost, mut in_place) = (0, 0);
        for u in units {
            let t = c + (u.vpn - vpn_start);
            if t == u.pfn {
                in_place += u.pages;
            } else if u.pinned {
                cost += BLOCK * u.pages;
            } else {
                cost += (t..t + u.pages).map(|f| weight(view, f)).sum::<u64>();
            }
        }
        if best.is_none_or(|b| cost < b.cost) {
            best = Some(Choice {
                pfn_start: c,
                cost,
                in_place,
            });
        }
    }
    best
}

/// A view of `[lo, lo + classes.len())`.
fn view_of(lo: u64, classes: &[FrameClass]) -> PhysView {
    PhysView::new(Pfn(lo), Pfn(lo + classes.len() as u64), |p| {
        classes[(p.0 - lo) as usize]
    })
}

fn unit(vpn: u64, pfn: u64, pages: u64) -> Unit {
    Unit {
        vpn,
        pfn,
        pages,
        pinned: false,
    }
}

use FrameClass::{Blocked, Claimed, Free, Movable};

#[test]
fn all_free_gives_the_lowest_window() {
    let view = view_of(3, &[Free; 100]);
    // Pages 0..16 of a VMA at vpn 40, resident at frames far away.
    let units = [unit(40, 1000, 8), unit(52, 2000, 4)];
    let got = choose(&view, &units, 40, 56, 8);
    // 40 ≡ 0 (mod 8): the first start ≥ 3 is 8.
    assert_eq!(
        got,
        Some(Choice {
            pfn_start: 8,
            cost: 12,
            in_place: 0
        })
    );
    assert_eq!(got, brute(&view, &units, 40, 56, 8, false));
}

/// The lowest free window is free to its last frame: with frames 10 and 22 claimed (no
/// page's target), the windows from 0 to 10 hold frame 10, and the one from 11 fits
/// between the two exactly.
#[test]
fn the_lowest_free_window_holds_no_claimed_frame_at_either_end() {
    let mut classes = [Free; 40];
    classes[10] = Claimed;
    classes[22] = Claimed;
    let view = view_of(0, &classes);
    // A VMA of 11 pages, 2 of them resident far away (in place nowhere): a window from 0
    // holds frame 10 as its last, one from 22 frame 22 as its first.
    let units = [unit(0, 1000, 1), unit(1, 2000, 1)];
    let got = choose(&view, &units, 0, 11, 1);
    // Window from 11, both pages to free frames, none in place.
    assert_eq!(
        got.map(|c| (c.pfn_start, c.cost, c.in_place)),
        Some((11, 2, 0))
    );
    assert_eq!(got, brute(&view, &units, 0, 11, 1, false));
}

#[test]
fn the_window_holding_most_pages_in_place_wins() {
    let mut classes = vec![Movable; 512];
    classes[..64].fill(Free);
    let view = view_of(0, &classes);
    // In place for start 256 except one page; a free window at 0 costs 16.
    let mut units: Vec<Unit> = (0..15).map(|i| unit(i, 256 + i, 1)).collect();
    units.push(unit(15, 7, 1));
    let got = choose(&view, &units, 0, 16, 16).unwrap();
    assert_eq!(
        got,
        Choice {
            pfn_start: 256,
            cost: 2,
            in_place: 15
        }
    );
    assert_eq!(Some(got), brute(&view, &units, 0, 16, 16, false));
}

#[test]
fn claimed_frames_are_never_inside_the_chosen_window() {
    let mut classes = vec![Free; 256];
    classes[70] = Claimed;
    let view = view_of(0, &classes);
    // Every page in place for start 64, whose window holds the claimed frame 70.
    let units: Vec<Unit> = (0..32).map(|i| unit(i, 64 + i, 1)).collect();
    let got = choose(&view, &units, 0, 32, 32).unwrap();
    assert_eq!((got.pfn_start, got.cost, got.in_place), (0, 32, 0));
    assert_eq!(Some(got), brute(&view, &units, 0, 32, 32, false));
    // No feasible candidate at all.
    let view = view_of(0, &[Claimed; 64]);
    assert_eq!(choose(&view, &units, 0, 32, 32), None);
}

#[test]
fn a_pinned_misplaced_unit_makes_its_candidate_expensive() {
    let view = view_of(0, &[Free; 128]);
    let units = [
        Unit {
            vpn: 0,
            pfn: 64,
            pages: 4,
            pinned: true,
        },
        unit(4, 100, 4),
    ];
    // Start 0 would cost BLOCK * 4 + 4; start 64 keeps the pinned unit in place.
    let got = choose(&view, &units, 0, 16, 16).unwrap();
    assert_eq!((got.pfn_start, got.cost, got.in_place), (64, 4, 4));
    assert_eq!(Some(got), brute(&view, &units, 0, 16, 16, false));
    let blocked = view_of(0, &[Blocked; 16]);
    let got = choose(&blocked, &units[1..], 0, 16, 16).unwrap();
    assert_eq!((got.pfn_start, got.cost), (0, 4 * BLOCK));
}

#[test]
fn nonsense_arguments_give_none() {
    let view = view_of(0, &[Free; 64]);
    let u = [unit(4, 0, 2)];
    assert_eq!(choose(&view, &u, 8, 8, 8), None, "empty range");
    assert_eq!(choose(&view, &u, 9, 8, 8), None, "inverted range");
    assert_eq!(choose(&view, &u, 0, 8, 0), None, "align 0");
    assert_eq!(
        choose(&view, &u, 0, 8, 12),
        None,
        "align not a power of two"
    );
    assert_eq!(choose(&view, &u, 0, 65, 1), None, "larger than the view");
    assert_eq!(choose(&view, &u, 5, 16, 1), None, "unit before the range");
    assert_eq!(choose(&view, &u, 0, 5, 1), None, "unit past the range");
    assert_eq!(choose(&view, &[unit(4, 0, 0)], 0, 8, 1), None, "no pages");
    let overlap = [unit(4, 0, 2), unit(5, 9, 1)];
    assert_eq!(choose(&view, &overlap, 0, 8, 1), None, "overlapping units");
    let wrap = [unit(u64::MAX - 1, 0, 4)];
    assert_eq!(choose(&view, &wrap, 0, u64::MAX, 1), None, "wrapping unit");
    assert!(choose(&view, &u, 0, 8, 1).is_some());
    let empty = PhysView::new(Pfn(10), Pfn(5), |_| Free);
    assert_eq!((empty.lo(), empty.hi()), (Pfn(10), Pfn(10)));
    assert_eq!(choose(&empty, &u, 0, 8, 1), None, "empty view");
    assert_eq!(view.class(Pfn(64)), Blocked, "outside the view");
}

/// A random case: view classes, VMA, units, align.
#[derive(Clone, Debug)]
struct Case {
    lo: u64,
    classes: Vec<FrameClass>,
    vpn_start: u64,
    vpn_end: u64,
    align: u64,
    units: Vec<Unit>,
}

fn class() -> impl Strategy<Value = FrameClass> {
    prop_oneof![5 => Just(Free), 4 => Just(Movable), 1 => Just(Blocked), 1 => Just(Claimed)]
}

/// Views made of runs of one class (short and long, so free windows occur), filled up
/// with one class; a VMA of up to 700 pages; units laid out with gaps, of 1 to 200
/// pages, some pinned, each either in place for one of two favoured starts (of the
/// candidates' phase), or somewhere in (or just past) the view; units in random order.
fn case() -> impl Strategy<Value = Case> {
    let runs =
        proptest::collection::vec((class(), prop_oneof![1..8u64, 1..64u64, 64..400u64]), 0..30);
    let units = proptest::collection::vec(
        (
            prop_oneof![3 => Just(0u64), 1 => 1..8u64, 1 => 8..300u64],
            prop_oneof![6 => Just(1u64), 1 => 2..8u64, 1 => 8..200u64],
            proptest::bool::weighted(0.1),
            0..4u8,
            any::<u64>(),
        ),
        0..120,
    );
    (
        0..200u64,
        16..2500u64,
        runs,
        class(),
        0..300u64,
        1..700u64,
        proptest::sample::select(vec![1u64, 2, 4, 8, 16, 64, 128]),
        units,
        (any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(lo, n, runs, fill, vpn_start, len, align, raw, (fa, fb))| {
                let mut classes: Vec<FrameClass> = runs
                    .iter()
                    .flat_map(|&(c, l)| core::iter::repeat_n(c, l as usize))
                    .take(n as usize)
                    .collect();
                classes.resize(n as usize, fill);
                let len = len.min(n);
                // Starts of the phase of the candidates, so units can be in place there.
                let phase = |f: u64| ((lo + f % n) & !(align - 1)) | (vpn_start & (align - 1));
                let favoured = [phase(fa), phase(fb)];
                let mut units = Vec::new();
                let mut off = 0;
                for (gap, pages, pinned, kind, r) in raw {
                    off += gap;
                    if off + pages > len {
                        break;
                    }
                    let pfn = match kind {
                        0 | 1 => favoured[kind as usize] + off,
                        2 => lo + r % (n + 64),
                        _ => r % (lo + n + 64),
                    };
                    units.push(Unit {
                        vpn: vpn_start + off,
                        pfn,
                        pages,
                        pinned,
                    });
                    off += pages;
                }
                Case {
                    lo,
                    classes,
                    vpn_start,
                    vpn_end: vpn_start + len,
                    align,
                    units,
                }
            },
        )
        .prop_flat_map(|c| {
            let units = Just(c.units.clone()).prop_shuffle();
            (Just(c), units).prop_map(|(c, units)| Case { units, ..c })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// The same choice (start, cost, pages in place) as trying every candidate.
    #[test]
    fn choose_matches_brute_force(c in case()) {
        let view = view_of(c.lo, &c.classes);
        let got = choose(&view, &c.units, c.vpn_start, c.vpn_end, c.align);
        let want = brute(&view, &c.units, c.vpn_start, c.vpn_end, c.align, false);
        prop_assert_eq!(got, want);
    }

    /// The same for the windows without blocked frames.
    #[test]
    fn choose_with_clean_matches_brute_force(c in case()) {
        let view = view_of(c.lo, &c.classes);
        let got = choose_with(&view, &c.units, c.vpn_start, c.vpn_end, c.align, Need::Clean);
        let want = brute(&view, &c.units, c.vpn_start, c.vpn_end, c.align, true);
        prop_assert_eq!(got, want);
    }
}

fn class_of(k: u8) -> FrameClass {
    [Free, Movable, Blocked, Claimed][usize::from(k % 4)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// A view built from runs (overlapping, reaching outside the view, empty or inverted)
    /// classes every frame as painting the runs in order over free frames does, and
    /// counts and reads words as that per-frame model does.
    #[test]
    fn runs_paint_like_a_per_frame_model(
        lo in 0u64..200,
        len in 0u64..400,
        runs in prop::collection::vec((0u64..700, 0u64..200, 0u8..4), 0..24),
    ) {
        let hi = lo + len;
        let mut model = vec![Free; len as usize];
        for &(start, n, k) in &runs {
            for f in start.max(lo)..(start + n).min(hi) {
                model[(f - lo) as usize] = class_of(k);
            }
        }
        let view = PhysView::from_runs(
            Pfn(lo),
            Pfn(hi),
            runs.iter().map(|&(start, n, k)| (Pfn(start), Pfn(start + n), class_of(k))),
        );
        for f in lo.saturating_sub(2)..hi + 2 {
            let want = if f < lo || f >= hi { Blocked } else { model[(f - lo) as usize] };
            prop_assert_eq!(view.class(Pfn(f)), want, "frame {}", f);
        }
        for (layer, class) in [(Layer::Movable, Movable), (Layer::Blocked, Blocked), (Layer::Claimed, Claimed)] {
            for start in (lo..hi).step_by(37) {
                let want = model[(start - lo) as usize..].iter().take(64).enumerate()
                    .filter(|&(_, &c)| c == class)
                    .fold(0u64, |w, (i, _)| w | 1 << i);
                prop_assert_eq!(view.word(layer, start), want);
                let count = model[(start - lo) as usize..].iter().filter(|&&c| c == class).count();
                prop_assert_eq!(view.count(layer, start, hi), count as u64);
            }
        }
    }
}

/// 1 Mi frames, all movable but one free 2 MiB-aligned window; a VMA of 200000 pages with
/// 100000 single-page units (every other page) scattered over the movable frames.
/// Prints the time; asserts only the result.
#[test]
fn a_big_view_with_one_free_window() {
    const FRAMES: u64 = 1 << 20;
    const LEN: u64 = 200_000;
    let window = 600 * 512;
    let t = Instant::now();
    let view = PhysView::new(Pfn(0), Pfn(FRAMES), |p| {
        if (window..window + LEN).contains(&p.0) {
            Free
        } else {
            Movable
        }
    });
    let built = t.elapsed();
    let units: Vec<Unit> = (0..LEN / 2)
        .map(|i| unit(2 * i, (i * 7919) % window, 1))
        .collect();
    let t = Instant::now();
    let got = choose(&view, &units, 0, LEN, 512);
    println!(
        "1 Mi frames, 100000 units, one free window: view {built:?}, choose {:?}",
        t.elapsed()
    );
    assert_eq!(
        got,
        Some(Choice {
            pfn_start: window,
            cost: LEN / 2,
            in_place: 0
        })
    );
}

/// A third of the frames free (every third one), the rest movable, and the same units
/// but in place nowhere: no window is free and the candidates' costs differ by one, the
/// worst case of the search. The free frames a candidate's units land on are those `c +
/// 2i ≡ 0 (mod 3)`, i.e. `i ≡ c (mod 3)`: 33334 of the 100000 units when `c ≡ 0`, so the
/// best is 0 at 200000 - 33334.
#[test]
fn a_big_view_without_a_free_window() {
    const FRAMES: u64 = 1 << 20;
    const LEN: u64 = 200_000;
    let view = PhysView::new(Pfn(0), Pfn(FRAMES), |p| {
        if p.0 % 3 == 0 {
            Free
        } else {
            Movable
        }
    });
    let units: Vec<Unit> = (0..LEN / 2).map(|i| unit(2 * i, 2 * i + 1, 1)).collect();
    let t = Instant::now();
    let got = choose(&view, &units, 0, LEN, 512);
    println!(
        "1 Mi frames, 100000 units, no free window: choose {:?}",
        t.elapsed()
    );
    assert_eq!(
        got,
        Some(Choice {
            pfn_start: 0,
            cost: 200_000 - 33_334,
            in_place: 0
        })
    );
}
