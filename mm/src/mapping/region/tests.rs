//! Unit tests of `region`.

use super::*;

#[test]
fn lookup_by_offset() {
    assert_eq!(SharedRegion::new(0).unwrap_err(), RegionError::ZeroLength);
    assert_eq!(SharedRegion::new(100).unwrap_err(), RegionError::Unaligned);
    let r = SharedRegion::new(4 << 20).unwrap();
    r.frames.lock().insert(
        512,
        RegionFrame {
            head: Pfn(1024),
            size: PageSize::Size2M,
        },
    );
    r.frames.lock().insert(
        3,
        RegionFrame {
            head: Pfn(7),
            size: PageSize::Size4K,
        },
    );
    assert_eq!(r.frame_at((512 + 5) * PAGE_SIZE).unwrap().0, Pfn(1029));
    assert_eq!(r.frame_at(3 * PAGE_SIZE + 17).unwrap().0, Pfn(7));
    assert!(r.frame_at(4 * PAGE_SIZE).is_none());
    assert!(r.frame_at(1024 * PAGE_SIZE).is_none());
    let map = r.frames.lock();
    assert!(overlaps(&map, 0, 512));
    assert!(!overlaps(&map, 4, 508));
    assert!(overlaps(&map, 1000, 24));
    drop(map);
    assert_eq!(r.frames().len(), 2);
    assert_eq!(r.len(), 4 << 20);
}
