//! The fault path's leaf-size cap (`Mm::set_max_leaf`): on a CPU without 1 GiB pages the
//! kernel caps it at 2 MiB, and a 1 GiB-policy VMA must then be mapped with 2 MiB leaves.
#![cfg(feature = "std")]

use mm::aspace::testing::{with_env, SparseMem};
use mm::base::addr::PageSize;
use mm::mapping::vma::{HugePolicy, VmaFlags};
use mm::ops::fault::FaultOutcome;

const G1: u64 = 1 << 30;
const FRAMES: u64 = 2 * G1 / 4096;

/// Map a 1 GiB-aligned, 1 GiB huge-page VMA, cap the leaves at `cap` (None: default),
/// fault once at its middle and populate the rest; returns the faulting leaf's size and
/// the sizes of all leaves.
fn fault_1g_vma(cap: Option<PageSize>) -> (PageSize, Vec<PageSize>) {
    with_env(SparseMem::new(FRAMES), FRAMES, &[], |env| {
        if let Some(cap) = cap {
            env.mm.set_max_leaf(cap);
        }
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(&s, G1, G1, VmaFlags::private(HugePolicy::Always, true))
            .unwrap();
        let first = match env.mm.handle_fault(&s, G1 + G1 / 2 + 8, true).unwrap() {
            FaultOutcome::Mapped { size, .. } => size,
            other => panic!("fault not mapped: {other:?}"),
        };
        env.mm.populate(&s, G1, G1).unwrap();
        let sizes = s.leaves().into_iter().map(|(_, t)| t.size).collect();
        env.mm.destroy_space(&s).unwrap();
        env.audit();
        (first, sizes)
    })
}

#[test]
fn by_default_a_1g_policy_fault_maps_one_1g_leaf() {
    let (first, sizes) = fault_1g_vma(None);
    assert_eq!(first, PageSize::Size1G);
    assert_eq!(sizes, vec![PageSize::Size1G]);
}

#[test]
fn capped_at_2m_a_1g_policy_vma_gets_2m_leaves() {
    let (first, sizes) = fault_1g_vma(Some(PageSize::Size2M));
    assert_eq!(first, PageSize::Size2M);
    assert_eq!(sizes.len(), 512);
    assert!(sizes.iter().all(|&s| s == PageSize::Size2M), "{sizes:?}");
}
