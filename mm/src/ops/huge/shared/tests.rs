//! Host tests of promotion and split of shared-region pages mapped by two address
//! spaces: at 2 MiB and 1 GiB, the data read through both spaces, the region's index,
//! the reverse map and the counts checked, a third mapping that cannot be huge keeping
//! smaller leaves of the compound block, and refusals that change nothing.

use crate::aspace::testing::{read_user, with_env, write_user, Env, SparseMem};
use crate::aspace::AddressSpace;
use crate::backend::phys::{Arena, PhysMem};
use crate::base::addr::{PageSize, Pfn};
use crate::mapping::region::SharedRegion;
use crate::mapping::vma::{HugePolicy, SharedBacking, VmaFlags};
use crate::ops::huge::HugeError;
use std::sync::Arc;
use std::vec::Vec;
use x86_64::PhysAddr;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

fn shared(region: &Arc<SharedRegion>, offset: u64) -> VmaFlags {
    VmaFlags {
        shared: Some(SharedBacking {
            region: region.clone(),
            offset,
        }),
        ..VmaFlags::private(HugePolicy::OnRequest, true)
    }
}

fn leaf<M: PhysMem>(s: &AddressSpace<'_, M>, va: u64) -> (PageSize, u64) {
    let t = s.translate(va).unwrap();
    (t.size, t.leaf_base_pa.as_u64())
}

fn tag(i: u64) -> u64 {
    i ^ 0x5eed_0000_0000
}

/// Every page `i` in `pages` reads `tag(i)` through `s` at `va`.
fn check<M: PhysMem>(env: &Env<'_, M>, s: &AddressSpace<'_, M>, va: u64, pages: &[u64]) {
    for &i in pages {
        assert_eq!(
            read_user(env.mem, s, va + i * K4 + 8),
            Some(tag(i)),
            "page {i}"
        );
    }
}

/// (map count, reference count) of the block headed at `pa`.
fn counts<M: PhysMem>(env: &Env<'_, M>, pa: u64) -> (u32, u32) {
    let m = env.mm.meta(Pfn::containing(PhysAddr::new(pa))).unwrap();
    (m.mapcount(), m.refcount())
}

#[test]
fn a_2m_shared_block_mapped_by_two_spaces_splits_and_promotes_in_both() {
    with_env(Arena::new(8192), 8192, &[], |env| {
        let region = SharedRegion::new(M2).unwrap();
        let (a, b) = (env.mm.new_space().unwrap(), env.mm.new_space().unwrap());
        let (va, vb, unaligned) = (0x4000_0000u64, 0x8000_0000u64, 0xc000_1000u64);
        env.mm.map_anon(&a, va, M2, shared(&region, 0)).unwrap();
        env.mm.map_anon(&b, vb, M2, shared(&region, 0)).unwrap();
        // The same region a third time, at an address no 2 MiB leaf can map.
        env.mm
            .map_anon(&b, unaligned, M2, shared(&region, 0))
            .unwrap();
        env.mm.populate(&a, va, M2).unwrap();
        let (size, pa) = leaf(&a, va);
        assert_eq!(size, PageSize::Size2M);
        env.mm.populate(&b, vb, M2).unwrap();
        env.mm.populate(&b, unaligned, M2).unwrap();
        assert_eq!(leaf(&b, vb), (PageSize::Size2M, pa));
        assert_eq!(
            leaf(&b, unaligned + 3 * K4),
            (PageSize::Size4K, pa + 3 * K4)
        );
        let pages: Vec<u64> = (0..512).step_by(7).chain([511]).collect();
        for &i in &pages {
            assert!(write_user(env.mem, &a, va + i * K4 + 8, tag(i)));
        }
        let both = |env: &Env<'_, _>| {
            check(env, &a, va, &pages);
            check(env, &b, vb, &pages);
            check(env, &b, unaligned, &pages);
        };
        both(env);
        // 2 + 512 mappings and the region's hold.
        assert_eq!(counts(env, pa), (514, 515));
        env.audit();

        assert_eq!(env.mm.split_huge(&b, vb + 9 * K4), Ok(PageSize::Size4K));
        assert_eq!(leaf(&a, va + 5 * K4), (PageSize::Size4K, pa + 5 * K4));
        assert_eq!(leaf(&b, vb + 5 * K4), (PageSize::Size4K, pa + 5 * K4));
        assert_eq!(region.frames().len(), 512, "the index has 512 entries");
        assert_eq!(
            counts(env, pa + 5 * K4),
            (3, 4),
            "each piece: 3 mappings, 1 hold"
        );
        both(env);
        env.audit();

        assert_eq!(env.mm.promote(&a, va, PageSize::Size2M), Ok(()));
        assert_eq!(leaf(&a, va), (PageSize::Size2M, pa), "in place");
        assert_eq!(leaf(&b, vb), (PageSize::Size2M, pa), "the other space too");
        assert_eq!(
            leaf(&b, unaligned + 3 * K4),
            (PageSize::Size4K, pa + 3 * K4)
        );
        assert_eq!(region.frames().len(), 1, "one index entry again");
        assert_eq!(counts(env, pa), (514, 515));
        assert_eq!(
            env.mm
                .rmap_of(Pfn::containing(PhysAddr::new(pa + 77 * K4)))
                .len(),
            514
        );
        both(env);
        env.audit();

        for s in [&a, &b] {
            env.mm.destroy_space(s).unwrap();
        }
        let free = env.free_frames();
        assert_eq!(env.mm.release_region(&region), Ok(1));
        assert_eq!(
            env.free_frames(),
            free + 512,
            "the compound block is freed whole"
        );
        env.audit();
    });
}

#[test]
fn a_1g_shared_block_mapped_by_two_spaces_splits_and_promotes_in_both() {
    const FRAMES: u64 = 3 << 18;
    with_env(SparseMem::new(FRAMES), FRAMES, &[], |env| {
        let region = SharedRegion::new(G1).unwrap();
        let (a, b) = (env.mm.new_space().unwrap(), env.mm.new_space().unwrap());
        let (va, vb) = (G1, 4 * G1);
        env.mm.map_anon(&a, va, G1, shared(&region, 0)).unwrap();
        env.mm.map_anon(&b, vb, G1, shared(&region, 0)).unwrap();
        env.mm.populate(&a, va, G1).unwrap();
        env.mm.populate(&b, vb, G1).unwrap();
        let (size, pa) = leaf(&a, va);
        assert_eq!(size, PageSize::Size1G);
        assert_eq!(leaf(&b, vb), (PageSize::Size1G, pa));
        let pages: Vec<u64> = [0, 1, 512, 511 * 512, 262_143].into();
        for &i in &pages {
            assert!(write_user(env.mem, &b, vb + i * K4 + 8, tag(i)));
        }
        assert_eq!(env.mm.split_huge(&a, va + 3 * M2), Ok(PageSize::Size2M));
        for (s, v) in [(&a, va), (&b, vb)] {
            assert_eq!(leaf(s, v + 3 * M2), (PageSize::Size2M, pa + 3 * M2));
            check(env, s, v, &pages);
        }
        assert_eq!(region.frames().len(), 512);
        assert_eq!(counts(env, pa + 3 * M2), (2, 3));
        env.audit();
        assert_eq!(env.mm.promote(&b, vb, PageSize::Size1G), Ok(()));
        for (s, v) in [(&a, va), (&b, vb)] {
            assert_eq!(leaf(s, v), (PageSize::Size1G, pa));
            check(env, s, v, &pages);
        }
        assert_eq!(region.frames().len(), 1);
        assert_eq!(counts(env, pa), (2, 3));
        env.audit();
    });
}

#[test]
fn shared_refusals_are_typed_and_change_nothing() {
    with_env(Arena::new(8192), 8192, &[], |env| {
        let region = SharedRegion::new(2 * M2).unwrap();
        let (a, b) = (env.mm.new_space().unwrap(), env.mm.new_space().unwrap());
        let (va, vb) = (0x4000_0000u64, 0x8000_0000u64);
        env.mm.map_anon(&a, va, 2 * M2, shared(&region, 0)).unwrap();
        env.mm.map_anon(&b, vb, 2 * M2, shared(&region, 0)).unwrap();
        env.mm.populate(&a, va, M2).unwrap();
        env.mm.populate(&b, vb, M2).unwrap();
        assert_eq!(env.mm.split_huge(&a, va), Ok(PageSize::Size4K));
        // Nothing faulted in the second 2 MiB: a hole.
        assert!(matches!(
            env.mm.promote(&a, va + M2, PageSize::Size2M),
            Err(HugeError::NotContiguous(_))
        ));
        let pin = env.mm.pin(&b, vb + 42 * K4).unwrap();
        let (la, lb, index) = (a.leaves(), b.leaves(), region.frames());
        assert_eq!(
            env.mm.promote(&a, va, PageSize::Size2M),
            Err(HugeError::Pinned)
        );
        assert_eq!((a.leaves(), b.leaves(), region.frames()), (la, lb, index));
        env.mm.unpin(pin).unwrap();
        // The region at an offset that no 2 MiB block can start at.
        let c = env.mm.new_space().unwrap();
        env.mm.map_anon(&c, va, M2, shared(&region, K4)).unwrap();
        env.mm.populate(&c, va, M2).unwrap();
        assert_eq!(
            env.mm.promote(&c, va, PageSize::Size2M),
            Err(HugeError::Unaligned)
        );
        assert_eq!(env.mm.promote(&a, va, PageSize::Size2M), Ok(()));
        assert_eq!(leaf(&b, vb).0, PageSize::Size2M);
        assert_eq!(
            leaf(&c, va + 5 * K4).0,
            PageSize::Size4K,
            "c keeps small leaves"
        );
        env.audit();
    });
}

#[test]
fn scattered_shared_pages_collapse_by_copy_and_in_place_for_both_spaces() {
    use crate::ops::huge::collapse::{CollapseMethod, CollapseOptions, CollapseTarget, Collapsed};
    for method in [CollapseMethod::Copy, CollapseMethod::InPlace] {
        with_env(Arena::new(8192), 8192, &[], |env| {
            let region = SharedRegion::new(M2).unwrap();
            let (a, b) = (env.mm.new_space().unwrap(), env.mm.new_space().unwrap());
            let (va, vb, filler) = (0x4000_0000u64, 0x8000_0000u64, 0x7000_0000_0000u64);
            env.mm.map_anon(&a, va, M2, shared(&region, 0)).unwrap();
            env.mm.map_anon(&b, vb, M2, shared(&region, 0)).unwrap();
            let never = VmaFlags::private(HugePolicy::Never, true);
            env.mm.map_anon(&a, filler, M2, never).unwrap();
            // 4 KiB faults interleaved with a filler's, in reverse order: scattered.
            for i in (0..512).rev() {
                env.mm.handle_fault(&a, va + i * K4, true).unwrap();
                env.mm.handle_fault(&a, filler + i * K4, true).unwrap();
                assert!(write_user(env.mem, &a, va + i * K4 + 8, tag(i)));
            }
            env.mm.populate(&b, vb, M2).unwrap();
            let pages: Vec<u64> = (0..512).collect();
            check(env, &b, vb, &pages);
            let opts = CollapseOptions {
                target: CollapseTarget::Size2M,
                method,
            };
            let out = env.mm.collapse(&a, va, M2, &opts).unwrap();
            let expected = match method {
                CollapseMethod::Copy => Collapsed::Copied,
                _ => Collapsed::InPlace,
            };
            assert_eq!(out[0].result, Ok(expected), "{method:?}");
            let (size, pa) = leaf(&a, va);
            assert_eq!(size, PageSize::Size2M);
            assert_eq!(leaf(&b, vb), (PageSize::Size2M, pa), "{method:?}");
            check(env, &a, va, &pages);
            check(env, &b, vb, &pages);
            assert_eq!(counts(env, pa), (2, 3));
            env.audit();
        });
    }
}
