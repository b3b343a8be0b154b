use super::*;
use std::vec;
use std::vec::Vec;

fn anchor() -> Anchor {
    Anchor {
        claim: ClaimId(1),
        segments: vec![
            AnchorSegment {
                start: 0x40_0000,
                end: 0x60_0000,
                pfn: Pfn(0x1000),
            },
            AnchorSegment {
                start: 0x60_0000,
                end: 0x60_1000,
                pfn: Pfn(0x77),
            },
        ],
    }
}

#[test]
fn a_page_belongs_on_its_segments_line() {
    let a = anchor();
    assert_eq!(a.target(0x40_0000), Some(Pfn(0x1000)));
    assert_eq!(a.target(0x40_1fff), Some(Pfn(0x1001)));
    assert_eq!(a.target(0x5f_f000), Some(Pfn(0x11ff)));
    assert_eq!(a.target(0x60_0abc), Some(Pfn(0x77)));
    assert_eq!(a.target(0x60_1000), None);
    assert_eq!(a.target(0x3f_f000), None);
}

#[test]
fn the_windows_of_a_part_are_its_share_of_each_segment() {
    let a = anchor();
    let all: Vec<_> = a.windows(0, u64::MAX).collect();
    assert_eq!(all, [(Pfn(0x1000), Pfn(0x1200)), (Pfn(0x77), Pfn(0x78))]);
    let part: Vec<_> = a.windows(0x41_0000, 0x42_0000).collect();
    assert_eq!(part, [(Pfn(0x1010), Pfn(0x1020))]);
    assert_eq!(a.windows(0x70_0000, 0x80_0000).count(), 0);
}
