//! Property test of the pageblock marks: after any sequence of claims and releases, a
//! pageblock is marked exactly when a claimed range overlaps it, and no other frame is.

use super::*;
use crate::frame::meta::FrameMeta;
use alloc::boxed::Box;
use proptest::prelude::*;

/// Eight pageblocks.
const FRAMES: u64 = 8 * PAGEBLOCK;

#[derive(Clone, Debug)]
enum Op {
    Claim(u64, u64, u64),
    Release(u64, u64, u64),
    ReleaseOwner(u64),
}

fn op() -> impl Strategy<Value = Op> {
    // Ranges start and end anywhere, often inside a pageblock, so neighbours share one.
    let range = (0..FRAMES, 1..3 * PAGEBLOCK);
    prop_oneof![
        4 => (range.clone(), 1..4u64).prop_map(|((s, n), o)| Op::Claim(s, (s + n).min(FRAMES), o)),
        2 => (range, 1..4u64).prop_map(|((s, n), o)| Op::Release(s, (s + n).min(FRAMES), o)),
        1 => (1..4u64).prop_map(Op::ReleaseOwner),
    ]
}

fn check(claims: &ClaimsGuard<'_>, table: FrameTable<'_>) {
    for f in 0..FRAMES {
        let marked = table
            .get(Pfn(f))
            .unwrap()
            .flags()
            .contains(FrameFlags::PAGEBLOCK_CLAIMED);
        let want = f % PAGEBLOCK == 0
            && claims
                .ranges()
                .any(|(s, e, _)| s.0 < f + PAGEBLOCK && f < e.0);
        assert_eq!(marked, want, "frame {f}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_pageblock_is_marked_exactly_when_a_claim_overlaps_it(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let records: Box<[FrameMeta]> = FrameTable::boxed_records(FRAMES as usize);
        let table = FrameTable::new(&records).unwrap();
        let windows = MarkedClaims::new();
        for op in ops {
            let mut claims = windows.lock(table);
            match op {
                Op::Claim(s, e, o) => {
                    let _ = claims.claim(Pfn(s), Pfn(e), ClaimId(o));
                }
                Op::Release(s, e, o) => {
                    claims.release(Pfn(s), Pfn(e), ClaimId(o));
                }
                Op::ReleaseOwner(o) => {
                    claims.release_owner(ClaimId(o));
                }
            }
            check(&claims, table);
        }
    }
}
