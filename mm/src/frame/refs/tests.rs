//! Unit and property tests of the frame counters.

use super::*;
use proptest::prelude::*;

/// The counters' lock token: these tests are their only writers.
const COUNTS: CountLock = CountLock::new();

fn fresh() -> FrameMeta {
    let m = FrameMeta::new();
    m.reset_allocated();
    m
}

#[test]
fn claims_are_exclusive_and_need_a_managed_block() {
    let m = fresh();
    assert!(!m.try_claim(&COUNTS), "unmanaged blocks cannot be claimed");
    m.make_managed_mapped();
    assert!(m.is_managed() && !m.is_claimed());
    assert!(m.try_claim(&COUNTS));
    assert!(m.is_claimed());
    assert!(!m.try_claim(&COUNTS), "a second mover is refused");
    m.unclaim(&COUNTS);
    assert!(!m.is_claimed() && m.is_managed());
}

#[test]
fn overflow_and_underflow_are_refused_without_change() {
    let m = fresh();
    m.add_mappings(&COUNTS, u32::MAX - 1).unwrap();
    assert_eq!((m.mapcount(), m.refcount()), (u32::MAX - 1, u32::MAX));
    assert_eq!(m.add_mappings(&COUNTS, 1), Err(CountError::Overflow));
    assert_eq!(m.pin(&COUNTS), Err(CountError::Overflow));
    assert_eq!(m.get_ref(&COUNTS), Err(CountError::Overflow));
    assert_eq!(
        (m.mapcount(), m.refcount(), m.pincount()),
        (u32::MAX - 1, u32::MAX, 0)
    );
    let z = FrameMeta::new();
    assert_eq!(z.remove_mapping(&COUNTS), Err(CountError::Underflow));
    assert_eq!(z.unpin(&COUNTS), Err(CountError::Underflow));
    assert_eq!(z.put_ref(&COUNTS), Err(CountError::Underflow));
    assert_eq!((z.mapcount(), z.refcount(), z.pincount()), (0, 0, 0));
}

#[test]
fn a_failed_move_changes_neither_block() {
    let from = fresh();
    let to = fresh();
    to.add_mappings(&COUNTS, u32::MAX - 1).unwrap();
    assert_eq!(
        from.move_mapping_to(&COUNTS, &to),
        Err(CountError::Overflow)
    );
    assert_eq!((from.mapcount(), from.refcount()), (0, 1));
    assert_eq!((to.mapcount(), to.refcount()), (u32::MAX - 1, u32::MAX));
    let empty = fresh();
    assert_eq!(
        empty.move_mapping_to(&COUNTS, &from),
        Err(CountError::Underflow)
    );
    assert_eq!((from.mapcount(), from.refcount()), (0, 1));
    assert_eq!((empty.mapcount(), empty.refcount()), (0, 1));
}

#[test]
fn the_last_reference_clears_the_owner() {
    let m = fresh();
    m.make_managed();
    m.get_ref(&COUNTS).unwrap();
    assert_eq!(m.put_ref(&COUNTS), Ok(Released::Alive));
    assert!(m.is_managed());
    assert_eq!(m.put_ref(&COUNTS), Ok(Released::Last));
    assert_eq!(m.owner(), 0);
}

/// The operations the property test applies.
#[derive(Clone, Copy, Debug)]
enum Op {
    Map(u32),
    Unmap,
    Pin,
    Unpin,
    Get,
    Put,
    MoveTo,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..4).prop_map(Op::Map),
        Just(Op::Unmap),
        Just(Op::Pin),
        Just(Op::Unpin),
        Just(Op::Get),
        Just(Op::Put),
        Just(Op::MoveTo),
    ]
}

proptest! {
    /// Against a model of plain integers: every operation either does what the model
    /// does or, when the model would go below zero, is refused and changes nothing.
    #[test]
    fn counters_follow_the_model(ops in proptest::collection::vec(op(), 1..64)) {
        let (a, b) = (fresh(), fresh());
        // (map, ref, pin) of a, and (map, ref) of b.
        let mut model = (0i64, 1i64, 0i64, 0i64, 1i64);
        for op in ops {
            let (map, refs, pins, bmap, brefs) = model;
            let (ok, next) = match op {
                Op::Map(n) => (true, (map + i64::from(n), refs + i64::from(n), pins, bmap, brefs)),
                Op::Unmap => (map > 0, (map - 1, refs, pins, bmap, brefs)),
                Op::Pin => (true, (map, refs + 1, pins + 1, bmap, brefs)),
                Op::Unpin => (pins > 0, (map, refs, pins - 1, bmap, brefs)),
                Op::Get => (true, (map, refs + 1, pins, bmap, brefs)),
                Op::Put => (refs > 1, (map, refs - 1, pins, bmap, brefs)),
                Op::MoveTo => (map > 0 && refs > 0, (map - 1, refs - 1, pins, bmap + 1, brefs + 1)),
            };
            let result = match op {
                Op::Map(n) => a.add_mappings(&COUNTS, n),
                Op::Unmap => a.remove_mapping(&COUNTS),
                Op::Pin => a.pin(&COUNTS),
                Op::Unpin => a.unpin(&COUNTS),
                Op::Get => a.get_ref(&COUNTS),
                // Keep the model's block alive: never drop the last reference here.
                Op::Put if refs > 1 => a.put_ref(&COUNTS).map(|r| assert_eq!(r, Released::Alive)),
                Op::Put => Err(CountError::Underflow),
                Op::MoveTo => a.move_mapping_to(&COUNTS, &b),
            };
            prop_assert_eq!(result.is_ok(), ok, "{:?} on {:?}", op, model);
            if ok {
                model = next;
            }
            let seen = (
                i64::from(a.mapcount()),
                i64::from(a.refcount()),
                i64::from(a.pincount()),
                i64::from(b.mapcount()),
                i64::from(b.refcount()),
            );
            prop_assert_eq!(seen, model);
        }
    }
}
