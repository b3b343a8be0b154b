//! Unit and property tests of the claimed-window tree.

use super::*;
use alloc::{format, vec};
use proptest::prelude::*;

const A: ClaimId = ClaimId(1);
const B: ClaimId = ClaimId(2);

fn spans(c: &PhysClaims) -> Vec<(u64, u64, ClaimId)> {
    c.ranges().map(|(s, e, o)| (s.0, e.0, o)).collect()
}

fn claim(c: &mut PhysClaims, s: u64, e: u64, o: ClaimId) -> Result<(), ClaimError> {
    c.claim(Pfn(s), Pfn(e), o)
}

#[test]
fn claims_of_one_owner_coalesce() {
    let mut c = PhysClaims::new();
    claim(&mut c, 10, 20, A).unwrap();
    claim(&mut c, 30, 40, A).unwrap();
    claim(&mut c, 20, 25, A).unwrap();
    assert_eq!(spans(&c), [(10, 25, A), (30, 40, A)]);
    claim(&mut c, 5, 35, A).unwrap();
    assert_eq!(spans(&c), [(5, 40, A)]);
    claim(&mut c, 40, 41, B).unwrap();
    assert_eq!(spans(&c), [(5, 40, A), (40, 41, B)]);
    assert_eq!((c.frames_of(A), c.frames_of(B), c.len()), (35, 1, 2));
}

#[test]
fn refused_claims_change_nothing() {
    let mut c = PhysClaims::with_limit(2);
    claim(&mut c, 10, 20, A).unwrap();
    claim(&mut c, 30, 40, B).unwrap();
    let before = spans(&c);
    assert_eq!(claim(&mut c, 7, 7, A), Err(ClaimError::Empty));
    assert_eq!(claim(&mut c, 9, 3, A), Err(ClaimError::Empty));
    assert_eq!(
        claim(&mut c, 15, 35, A),
        Err(ClaimError::Overlaps {
            owner: B,
            start: Pfn(30),
            end: Pfn(40)
        })
    );
    assert_eq!(
        claim(&mut c, 0, 50, ClaimId(3)),
        Err(ClaimError::Overlaps {
            owner: A,
            start: Pfn(10),
            end: Pfn(20)
        })
    );
    assert_eq!(claim(&mut c, 50, 60, A), Err(ClaimError::Full));
    assert_eq!(spans(&c), before);
    // Growing a stored range needs no new entry, so a full table still accepts it.
    claim(&mut c, 20, 30, A).unwrap();
    assert_eq!(spans(&c), [(10, 30, A), (30, 40, B)]);
}

#[test]
fn a_release_splits_even_past_the_limit() {
    let mut c = PhysClaims::with_limit(1);
    claim(&mut c, 0, 100, A).unwrap();
    assert_eq!(c.release(Pfn(40), Pfn(60), A), 20);
    assert_eq!(spans(&c), [(0, 40, A), (60, 100, A)]);
    assert_eq!(c.release(Pfn(30), Pfn(70), B), 0);
    assert_eq!(c.release(Pfn(70), Pfn(60), A), 0);
    assert_eq!(claim(&mut c, 200, 210, A), Err(ClaimError::Full));
    assert_eq!(c.release_owner(A), 80);
    assert!(c.is_empty());
    claim(&mut c, 200, 210, A).unwrap();
}

#[test]
fn a_new_limit_applies_to_later_claims_and_absurd_ones_are_refused() {
    let mut c = PhysClaims::new();
    claim(&mut c, 0, 10, A).unwrap();
    claim(&mut c, 20, 30, B).unwrap();
    assert_eq!(c.set_limit(0), Err(LimitError::Zero));
    assert_eq!(
        c.set_limit(MAX_LIMIT + 1),
        Err(LimitError::TooLarge {
            limit: MAX_LIMIT + 1
        })
    );
    assert_eq!(c.limit(), DEFAULT_LIMIT);
    // Below the ranges stored: they stay, a new range is refused, growing one is not.
    c.set_limit(1).unwrap();
    assert_eq!(spans(&c), [(0, 10, A), (20, 30, B)]);
    assert_eq!(claim(&mut c, 40, 50, ClaimId(3)), Err(ClaimError::Full));
    claim(&mut c, 10, 15, A).unwrap();
    c.release_owner(B);
    claim(&mut c, 40, 50, ClaimId(3)).unwrap_err();
    c.set_limit(MAX_LIMIT).unwrap();
    claim(&mut c, 40, 50, ClaimId(3)).unwrap();
    assert_eq!(c.len(), 2);
}

#[test]
fn queries_at_the_edges() {
    let mut c = PhysClaims::new();
    claim(&mut c, 10, 20, A).unwrap();
    claim(&mut c, u64::MAX - 1, u64::MAX, B).unwrap();
    assert_eq!(c.owner_at(Pfn(9)), None);
    assert_eq!(c.owner_at(Pfn(10)), Some(A));
    assert_eq!(c.owner_at(Pfn(19)), Some(A));
    assert_eq!(c.owner_at(Pfn(20)), None);
    assert_eq!(c.owner_at(Pfn(u64::MAX - 1)), Some(B));
    assert_eq!(c.owner_at(Pfn(u64::MAX)), None);
    assert_eq!(
        c.conflict(Pfn(20), Pfn(30), B),
        None,
        "touching is no overlap"
    );
    assert_eq!(c.conflict(Pfn(19), Pfn(30), A), None, "own frames");
    assert_eq!(c.conflict(Pfn(19), Pfn(30), B), Some((Pfn(10), Pfn(20), A)));
    assert_eq!(c.conflict(Pfn(15), Pfn(12), B), None, "inverted");
    assert_eq!(PhysClaims::default().limit(), DEFAULT_LIMIT);
}

#[test]
fn errors_display() {
    assert_eq!(
        format!(
            "{}",
            ClaimError::Overlaps {
                owner: A,
                start: Pfn(0x10),
                end: Pfn(0x20)
            }
        ),
        "overlaps frames [0x10, 0x20) claimed by owner 1"
    );
    assert_eq!(format!("{}", ClaimError::Full), "the claim table is full");
    assert_eq!(
        format!("{}", ClaimError::Empty),
        "empty or inverted frame range"
    );
}

/// Frames the model covers (a few past them stay unclaimed, for the edges).
const FRAMES: u64 = 48;
const OWNERS: u64 = 3;

#[derive(Clone, Debug)]
enum Op {
    Claim(u64, u64, ClaimId),
    Release(u64, u64, ClaimId),
    ReleaseOwner(ClaimId),
}

fn owner() -> impl Strategy<Value = ClaimId> {
    (0..OWNERS).prop_map(ClaimId)
}

fn op() -> impl Strategy<Value = Op> {
    let pfn = || 0..FRAMES + 2;
    prop_oneof![
        4 => (pfn(), pfn(), owner()).prop_map(|(s, e, o)| Op::Claim(s, e, o)),
        2 => (pfn(), pfn(), owner()).prop_map(|(s, e, o)| Op::Release(s, e, o)),
        1 => owner().prop_map(Op::ReleaseOwner),
    ]
}

/// The maximal runs of frames with one owner: what the table must store.
fn runs(model: &[Option<ClaimId>]) -> Vec<(u64, u64, ClaimId)> {
    let mut out: Vec<(u64, u64, ClaimId)> = Vec::new();
    for (p, o) in model.iter().enumerate() {
        let (p, Some(o)) = (p as u64, *o) else {
            continue;
        };
        match out.last_mut() {
            Some((_, e, last)) if *e == p && *last == o => *e += 1,
            _ => out.push((p, p + 1, o)),
        }
    }
    out
}

/// What the model says a claim returns, applying it when it succeeds.
fn model_claim(
    model: &mut [Option<ClaimId>],
    limit: usize,
    s: u64,
    e: u64,
    o: ClaimId,
) -> Result<(), ClaimError> {
    if s >= e {
        return Err(ClaimError::Empty);
    }
    let cover = s as usize..e as usize;
    if let Some(p) = cover.clone().find(|&p| model[p].is_some_and(|x| x != o)) {
        let (start, end, owner) = runs(model)
            .into_iter()
            .find(|&(rs, re, _)| rs <= p as u64 && (p as u64) < re)
            .unwrap();
        return Err(ClaimError::Overlaps {
            owner,
            start: Pfn(start),
            end: Pfn(end),
        });
    }
    let before = runs(model).len();
    let mut after = model.to_vec();
    after[cover].fill(Some(o));
    if runs(&after).len() > before && before >= limit {
        return Err(ClaimError::Full);
    }
    model.copy_from_slice(&after);
    Ok(())
}

proptest! {
    /// Against a per-frame owner array: every operation returns what the model says,
    /// and after each one the stored ranges are exactly the model's maximal runs (so
    /// disjoint, sorted and coalesced per owner) and every query agrees.
    #[test]
    fn claims_follow_a_per_frame_model(
        limit in 1usize..8,
        ops in proptest::collection::vec((op(), 0..FRAMES + 2, 0..FRAMES + 2, owner()), 1..40),
    ) {
        let mut c = PhysClaims::with_limit(limit);
        let mut model = vec![None; (FRAMES + 4) as usize];
        for (op, qs, qe, qo) in ops {
            match op {
                Op::Claim(s, e, o) => {
                    let want = model_claim(&mut model, limit, s, e, o);
                    prop_assert_eq!(claim(&mut c, s, e, o), want);
                }
                Op::Release(s, e, o) => {
                    let mut freed = 0;
                    for p in s..e.max(s) {
                        if model[p as usize] == Some(o) {
                            model[p as usize] = None;
                            freed += 1;
                        }
                    }
                    prop_assert_eq!(c.release(Pfn(s), Pfn(e), o), freed);
                }
                Op::ReleaseOwner(o) => {
                    let mut freed = 0;
                    for slot in model.iter_mut().filter(|x| **x == Some(o)) {
                        *slot = None;
                        freed += 1;
                    }
                    prop_assert_eq!(c.release_owner(o), freed);
                }
            }
            let want = runs(&model);
            prop_assert_eq!(spans(&c), want.clone());
            prop_assert_eq!(c.len(), want.len());
            prop_assert_eq!(c.is_empty(), want.is_empty());
            for (p, o) in model.iter().enumerate() {
                prop_assert_eq!(c.owner_at(Pfn(p as u64)), *o);
            }
            for o in (0..OWNERS).map(ClaimId) {
                let n = model.iter().filter(|x| **x == Some(o)).count() as u64;
                prop_assert_eq!(c.frames_of(o), n);
            }
            let first = (qs..qe.max(qs)).find(|&p| model[p as usize].is_some_and(|x| x != qo));
            let want = first.map(|p| {
                let (s, e, o) = *want.iter().find(|r| r.0 <= p && p < r.1).unwrap();
                (Pfn(s), Pfn(e), o)
            });
            prop_assert_eq!(c.conflict(Pfn(qs), Pfn(qe), qo), want);
        }
    }
}
