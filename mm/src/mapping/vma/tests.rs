//! Unit tests of `vma`.

use super::*;

fn flags(writable: bool) -> VmaFlags {
    VmaFlags::private(HugePolicy::Never, writable)
}

fn vma(start: u64, end: u64) -> Vma {
    Vma {
        start,
        end,
        flags: flags(true),
        anchor: None,
    }
}

fn spans(set: &VmaSet) -> Vec<(u64, u64, bool)> {
    set.iter()
        .map(|v| (v.start, v.end, v.flags.writable))
        .collect()
}

#[test]
fn ranges_are_checked() {
    assert_eq!(check_user_range(0x1000, 0), Err(VmaError::ZeroLength));
    assert_eq!(check_user_range(0x1001, 0x1000), Err(VmaError::Unaligned));
    assert_eq!(check_user_range(0x1000, 0x1001), Err(VmaError::Unaligned));
    assert_eq!(
        check_user_range(LOWER_HALF_END - 0x1000, 0x2000),
        Err(VmaError::NonCanonical)
    );
    assert_eq!(
        check_user_range(LOWER_HALF_END, 0x1000),
        Err(VmaError::NonCanonical)
    );
    assert_eq!(
        check_user_range(UPPER_HALF_START, 0x1000),
        Err(VmaError::KernelHalf)
    );
    assert_eq!(
        check_user_range(u64::MAX - 0xfff, 0x1000),
        Err(VmaError::KernelHalf)
    );
    assert_eq!(
        check_user_range(0x1000, u64::MAX - 0xfff),
        Err(VmaError::NonCanonical)
    );
    assert_eq!(
        check_user_range(LOWER_HALF_END - 0x1000, 0x1000),
        Ok((LOWER_HALF_END - 0x1000, LOWER_HALF_END))
    );
    assert_eq!(check_user_addr(0), Ok(()));
}

#[test]
fn insert_find_and_overlap() {
    let mut set = VmaSet::new();
    set.insert(vma(0x10000, 0x20000)).unwrap();
    set.insert(vma(0x30000, 0x40000)).unwrap();
    for (s, e) in [
        (0x1f000, 0x21000),
        (0x0, 0x11000),
        (0x18000, 0x19000),
        (0x0, 0x50000),
    ] {
        assert_eq!(set.insert(vma(s, e)), Err(VmaError::Overlap));
    }
    assert_eq!(set.insert(vma(0x5000, 0x5000)), Err(VmaError::ZeroLength));
    set.insert(vma(0x20000, 0x30000)).unwrap();
    assert_eq!(set.len(), 3);
    assert_eq!(set.find(0x1ffff).unwrap().start, 0x10000);
    assert_eq!(set.find(0x20000).unwrap().start, 0x20000);
    assert!(set.find(0x40000).is_none());
    assert!(set.find(0xffff).is_none());
    assert!(set.covers(0x10000, 0x40000));
    assert!(!set.covers(0x10000, 0x41000));
    assert!(!set.covers(0xf000, 0x11000));
}

#[test]
fn remove_range_splits_and_keeps_shared_offsets() {
    let region = SharedRegion::new(0x40000).unwrap();
    let mut set = VmaSet::new();
    let mut f = flags(true);
    f.shared = Some(SharedBacking {
        region: region.clone(),
        offset: 0x1000,
    });
    set.insert(Vma {
        start: 0x10000,
        end: 0x30000,
        flags: f,
        anchor: None,
    })
    .unwrap();
    let removed = set.remove_range(0x18000, 0x20000);
    assert_eq!(removed.len(), 1);
    assert_eq!((removed[0].start, removed[0].end), (0x18000, 0x20000));
    assert_eq!(removed[0].region_offset(0x18000), Some(0x9000));
    let left: Vec<_> = set
        .iter()
        .map(|v| (v.start, v.end, v.region_offset(v.start)))
        .collect();
    assert_eq!(
        left,
        [
            (0x10000, 0x18000, Some(0x1000)),
            (0x20000, 0x30000, Some(0x11000))
        ]
    );
    assert!(set.remove_range(0x40000, 0x50000).is_empty());
    assert_eq!(set.clear().len(), 2);
    assert!(set.is_empty());
}

#[test]
fn set_writable_splits_only_where_it_changes() {
    let mut set = VmaSet::new();
    set.insert(vma(0x10000, 0x20000)).unwrap();
    set.insert(Vma {
        start: 0x20000,
        end: 0x30000,
        flags: flags(false),
        anchor: None,
    })
    .unwrap();
    set.set_writable(0x18000, 0x28000, false);
    assert_eq!(
        spans(&set),
        [
            (0x10000, 0x18000, true),
            (0x18000, 0x20000, false),
            (0x20000, 0x30000, false)
        ]
    );
    set.set_writable(0x1c000, 0x24000, true);
    assert_eq!(
        spans(&set),
        [
            (0x10000, 0x18000, true),
            (0x18000, 0x1c000, false),
            (0x1c000, 0x20000, true),
            (0x20000, 0x24000, true),
            (0x24000, 0x30000, false)
        ]
    );
}

#[test]
fn both_pieces_of_a_split_keep_the_anchor_line() {
    use crate::base::addr::Pfn;
    use crate::mapping::anchor::{Anchor, AnchorSegment};
    use crate::mapping::claims::ClaimId;
    let mut set = VmaSet::new();
    set.insert(vma(0x10_0000, 0x50_0000)).unwrap();
    let anchor = Anchor {
        claim: ClaimId(3),
        segments: alloc::vec![AnchorSegment {
            start: 0x10_0000,
            end: 0x50_0000,
            pfn: Pfn(0x900),
        }],
    };
    assert!(!set.set_anchor(0x10_0000, 0x40_0000, Some(anchor.clone())));
    assert!(set.set_anchor(0x10_0000, 0x50_0000, Some(anchor)));
    set.set_writable(0x20_0000, 0x30_0000, false);
    let removed = set.remove_range(0x40_0000, 0x50_0000);
    let target = |v: &Vma, va: u64| v.anchor.as_ref().and_then(|a| a.target(va));
    for v in set.iter().chain(&removed) {
        assert_eq!(
            target(v, v.start),
            Some(Pfn(0x900 + (v.start - 0x10_0000) / 4096))
        );
    }
    assert_eq!(set.len(), 3);
}
