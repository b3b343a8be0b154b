//! Unit tests of `rmap`.

use super::*;

fn e(space: u64, va: u64, size: PageSize, offset: u64) -> RmapEntry {
    RmapEntry {
        space: SpaceId(space),
        va: VirtAddr::new(va),
        size,
        offset,
    }
}

#[test]
fn entries_group_by_head_and_space() {
    let mut r = Rmap::default();
    assert!(r.insert(Pfn(512), e(1, 0x20_0000, PageSize::Size2M, 0)));
    assert!(r.insert(Pfn(512), e(2, 0x40_0000, PageSize::Size4K, 3)));
    assert!(r.insert(Pfn(512), e(2, 0x40_1000, PageSize::Size4K, 4)));
    assert!(r.insert(Pfn(513), e(1, 0x1000, PageSize::Size4K, 0)));
    assert!(!r.insert(Pfn(512), e(1, 0x20_0000, PageSize::Size4K, 0)));
    assert_eq!(r.entries(Pfn(512)).len(), 3);
    assert_eq!(r.range_in(Pfn(512), SpaceId(2)).count(), 2);
    let spaces: Vec<SpaceId> = r.range_of(Pfn(512)).map(|e| e.space).collect();
    assert_eq!(spaces, [SpaceId(1), SpaceId(2), SpaceId(2)]);
    assert_eq!(
        r.remove(Pfn(512), SpaceId(2), 0x40_1000),
        Some(e(2, 0x40_1000, PageSize::Size4K, 4))
    );
    assert_eq!(r.remove(Pfn(512), SpaceId(2), 0x40_1000), None);
    assert_eq!(r.all().count(), 3);
    assert_eq!(r.range_in(Pfn(513), SpaceId(u64::MAX)).count(), 0);
}

/// What the reverse map must behave as: one ordered map keyed by (head, space, address).
type Model = BTreeMap<(u64, SpaceId, u64), (PageSize, u64)>;

#[derive(Clone, Debug)]
enum Op {
    Insert(u64, u64, u64, u64),
    Remove(u64, u64, u64),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    // Few heads, spaces and addresses, so that blocks are mapped several times over and
    // the same keys come back.
    prop_oneof![
        (0..4u64, 0..3u64, 0..4u64, 0..8u64).prop_map(|(h, s, v, o)| Op::Insert(h, s, v, o)),
        (0..4u64, 0..3u64, 0..4u64).prop_map(|(h, s, v)| Op::Remove(h, s, v)),
    ]
}

proptest::proptest! {
    /// Every query agrees with the model after every insert and remove: a block goes
    /// from one mapping to many and back.
    #[test]
    fn queries_agree_with_an_ordered_map(ops in proptest::collection::vec(op(), 0..200)) {
        let mut r = Rmap::default();
        let mut model = Model::new();
        let va = |v: u64| v * 0x1000;
        for op in ops {
            match op {
                Op::Insert(h, s, v, o) => {
                    let key = (h, SpaceId(s), va(v));
                    let fresh = !model.contains_key(&key);
                    if fresh {
                        model.insert(key, (PageSize::Size4K, o));
                    }
                    proptest::prop_assert_eq!(r.insert(Pfn(h), e(s, va(v), PageSize::Size4K, o)), fresh);
                }
                Op::Remove(h, s, v) => {
                    let key = (h, SpaceId(s), va(v));
                    let want = model.remove(&key).map(|(size, o)| e(s, va(v), size, o));
                    proptest::prop_assert_eq!(r.remove(Pfn(h), SpaceId(s), va(v)), want);
                }
            }
            let all: Vec<(Pfn, RmapEntry)> = r.all().collect();
            let want: Vec<(Pfn, RmapEntry)> = model
                .iter()
                .map(|(&(h, s, v), &(size, o))| (Pfn(h), e(s.0, v, size, o)))
                .collect();
            proptest::prop_assert_eq!(&all, &want);
            for h in 0..4 {
                let of: Vec<RmapEntry> = r.range_of(Pfn(h)).collect();
                let of_want: Vec<RmapEntry> =
                    want.iter().filter(|(p, _)| p.0 == h).map(|&(_, e)| e).collect();
                proptest::prop_assert_eq!(&of, &of_want);
                for s in 0..3 {
                    let inn: Vec<RmapEntry> = r.range_in(Pfn(h), SpaceId(s)).collect();
                    let in_want: Vec<RmapEntry> =
                        of_want.iter().copied().filter(|e| e.space == SpaceId(s)).collect();
                    proptest::prop_assert_eq!(inn, in_want);
                    for v in 0..4 {
                        let got = r.get(Pfn(h), SpaceId(s), va(v));
                        let exp = model
                            .get(&(h, SpaceId(s), va(v)))
                            .map(|&(size, o)| e(s, va(v), size, o));
                        proptest::prop_assert_eq!(got, exp);
                    }
                }
            }
        }
    }
}
