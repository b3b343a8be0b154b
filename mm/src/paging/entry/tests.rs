//! Unit tests of `entry`.

use super::*;

#[test]
fn pat_moves_between_bit_7_and_bit_12() {
    let flags = PageTableFlags::WRITABLE | LEAF_PAT | PageTableFlags::NO_EXECUTE;
    let pte = Entry::leaf(PhysAddr::new(0x1234_5000), PageSize::Size4K, flags);
    assert_eq!(pte.raw(), 0x8000_0000_1234_5083);
    assert_eq!(pte.leaf_addr(PageSize::Size4K).as_u64(), 0x1234_5000);
    assert_eq!(
        pte.leaf_flags(PageSize::Size4K),
        flags | PageTableFlags::PRESENT
    );

    let pmd = Entry::leaf(PhysAddr::new(0x4020_0000), PageSize::Size2M, flags);
    assert_eq!(pmd.raw(), 0x8000_0000_4020_1083);
    assert!(pmd.is_huge());
    assert_eq!(pmd.leaf_size(2), Some(PageSize::Size2M));
    assert_eq!(pmd.leaf_addr(PageSize::Size2M).as_u64(), 0x4020_0000);
    assert_eq!(
        pmd.leaf_flags(PageSize::Size2M),
        flags | PageTableFlags::PRESENT
    );
}

#[test]
fn table_entries_and_leaf_rule() {
    let t = Entry::table(PhysAddr::new(0x7000), true);
    assert_eq!(t.raw(), 0x7007);
    assert_eq!(t.leaf_size(2), None);
    assert_eq!(t.leaf_size(4), None);
    assert_eq!(t.table_addr().as_u64(), 0x7000);
    let pte = Entry::leaf(PhysAddr::new(0x7000), PageSize::Size4K, LEAF_PAT);
    assert_eq!(pte.leaf_size(1), Some(PageSize::Size4K));
    assert_eq!(Entry::UNUSED.leaf_size(1), None);
    assert!(valid_leaf_flags(LEAF_PAT | PageTableFlags::BIT_52));
    assert!(!valid_leaf_flags(PageTableFlags::HUGE_PAGE));
    assert!(!valid_leaf_flags(PageTableFlags::from_bits_retain(1 << 13)));
}
