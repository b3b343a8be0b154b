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
