use super::*;

#[test]
fn migration_entries_round_trip_flags_and_sizes() {
    let flags = PageTableFlags::WRITABLE
        | PageTableFlags::USER_ACCESSIBLE
        | PageTableFlags::NO_EXECUTE
        | PageTableFlags::ACCESSED
        | PageTableFlags::DIRTY
        | crate::paging::LEAF_PAT;
    for (size, pa) in [
        (PageSize::Size4K, 0x1234_5000u64),
        (PageSize::Size2M, 0x4020_0000),
        (PageSize::Size1G, 0x1_4000_0000),
    ] {
        let leaf = Entry::leaf(PhysAddr::new(pa), size, flags);
        let mig = MigrationEntry::from_leaf(leaf, size).unwrap();
        let e = mig.entry();
        assert!(!e.is_present() && !e.is_unused());
        assert_eq!(
            e.raw() & SOFT_BITS,
            MIGRATION_BIT | (size_code(size) << SIZE_SHIFT)
        );
        assert_eq!(MigrationEntry::decode(e, size.level()), Some(mig));
        let other = PageSize::ALL.into_iter().find(|&s| s != size).unwrap();
        assert_eq!(MigrationEntry::decode(e, other.level()), None);
        assert_eq!(mig.size(), size);
        assert_eq!(mig.source().as_u64(), pa);
        assert_eq!(mig.original(), leaf);
        assert_eq!(mig.flags(), flags | PageTableFlags::PRESENT);
        let moved = mig.retarget(PhysAddr::new(pa + size.bytes()));
        assert_eq!(moved.leaf_addr(size).as_u64(), pa + size.bytes());
        assert_eq!(moved.leaf_flags(size), leaf.leaf_flags(size));
    }
}

#[test]
fn only_clean_present_leaves_become_migration_entries() {
    let leaf = Entry::leaf(
        PhysAddr::new(0x5000),
        PageSize::Size4K,
        PageTableFlags::BIT_9,
    );
    assert_eq!(MigrationEntry::from_leaf(leaf, PageSize::Size4K), None);
    assert_eq!(
        MigrationEntry::from_leaf(Entry::UNUSED, PageSize::Size4K),
        None
    );
    assert_eq!(MigrationEntry::decode(Entry::from_raw(0x5000), 1), None);
    assert_eq!(MigrationEntry::decode(Entry::from_raw(0x5200), 1), None);
    let present = Entry::leaf(
        PhysAddr::new(0x5000),
        PageSize::Size4K,
        PageTableFlags::empty(),
    );
    assert_eq!(MigrationEntry::decode(present, 1), None);
}

#[test]
fn software_entries_are_told_apart() {
    let leaf = Entry::leaf(
        PhysAddr::new(0x4020_0000),
        PageSize::Size2M,
        PageTableFlags::WRITABLE,
    );
    assert_eq!(SoftwareEntry::decode(leaf, 2), None);
    assert_eq!(SoftwareEntry::decode(Entry::UNUSED, 2), None);
    let mig = MigrationEntry::from_leaf(leaf, PageSize::Size2M).unwrap();
    assert_eq!(
        SoftwareEntry::decode(mig.entry(), 2),
        Some(SoftwareEntry::Migration(mig))
    );
    assert_eq!(
        SoftwareEntry::decode(mig.entry(), 1),
        Some(SoftwareEntry::Unknown(mig.entry()))
    );
    let marker = replacing(leaf);
    assert!(!marker.is_present());
    assert_eq!(
        SoftwareEntry::decode(marker, 2),
        Some(SoftwareEntry::Replacing(marker))
    );
    assert_eq!(MigrationEntry::decode(marker, 2), None);
    let bare = Entry::from_raw(leaf.raw() & !1);
    assert_eq!(
        SoftwareEntry::decode(bare, 2),
        Some(SoftwareEntry::Unknown(bare))
    );
    assert_eq!(SoftwareEntry::decode(marker, 2).unwrap().entry(), marker);
}
