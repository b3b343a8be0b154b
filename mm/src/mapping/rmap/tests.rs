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
    Insert(u64, u64, usize, usize, usize),
    Remove(u64, u64, usize),
}

/// The addresses the model test maps at: low and high in the user half, the bottom of
/// the kernel half (kept whole by the packed form's sign extension) and one not page
/// aligned (which does not pack).
const VAS: [u64; 5] = [
    0x1000,
    0x20_0000,
    0x7fff_ffff_f000,
    0xffff_8000_0000_0000,
    0x3008,
];
/// Offsets: the last frame of a 1 GiB block still packs, the one past it does not.
const OFFSETS: [u64; 4] = [0, 3, (1 << 18) - 1, 1 << 18];
const SIZES: [PageSize; 3] = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G];

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    // Few heads, spaces and addresses, so that blocks are mapped several times over and
    // the same keys come back.
    prop_oneof![
        (
            0..4u64,
            0..3u64,
            0..VAS.len(),
            0..SIZES.len(),
            0..OFFSETS.len()
        )
            .prop_map(|(h, s, v, z, o)| Op::Insert(h, s, v, z, o)),
        (0..4u64, 0..3u64, 0..VAS.len()).prop_map(|(h, s, v)| Op::Remove(h, s, v)),
    ]
}

#[test]
fn a_block_mapped_twice_takes_the_room_of_one_mapped_once() {
    assert!(core::mem::size_of::<Mappings>() <= 40);
    let mut r = Rmap::default();
    assert!(r.insert(
        Pfn(9),
        e(1, 0x7fff_ffff_f000, PageSize::Size4K, (1 << 18) - 1)
    ));
    assert!(r.insert(Pfn(9), e(1, 0x1000, PageSize::Size1G, 0)));
    assert!(matches!(r.maps.get(&9), Some(Mappings::Two(_))));
    assert!(r.insert(Pfn(9), e(2, 0x1000, PageSize::Size2M, 7)));
    assert!(matches!(r.maps.get(&9), Some(Mappings::Many(_))));
    assert!(r.remove(Pfn(9), SpaceId(1), 0x1000).is_some());
    assert!(matches!(r.maps.get(&9), Some(Mappings::Two(_))));
    assert_eq!(
        r.entries(Pfn(9)),
        [
            e(1, 0x7fff_ffff_f000, PageSize::Size4K, (1 << 18) - 1),
            e(2, 0x1000, PageSize::Size2M, 7)
        ]
    );
}

proptest::proptest! {
    /// Every query agrees with the model after every insert and remove: a block goes
    /// from one mapping to two (packed, or not when they do not pack) to many and back.
    #[test]
    fn queries_agree_with_an_ordered_map(ops in proptest::collection::vec(op(), 0..200)) {
        let mut r = Rmap::default();
        let mut model = Model::new();
        let va = |v: usize| VAS[v];
        for op in ops {
            match op {
                Op::Insert(h, s, v, z, o) => {
                    let key = (h, SpaceId(s), va(v));
                    let fresh = !model.contains_key(&key);
                    let (size, o) = (SIZES[z], OFFSETS[o]);
                    if fresh {
                        model.insert(key, (size, o));
                    }
                    proptest::prop_assert_eq!(r.insert(Pfn(h), e(s, va(v), size, o)), fresh);
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
                    for v in 0..VAS.len() {
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
