//! Host tests of the compaction for the copying collapse: with no free 2 MiB block
//! (every one holds a scattered 4 KiB page), the collapse compacts a window and counts
//! it; with a pinned page in every 2 MiB block it fails with a typed error and changes
//! nothing.

use crate::aspace::testing::{read_user, with_env, write_user, Env};
use crate::aspace::vmstat::Event;
use crate::aspace::AddressSpace;
use crate::backend::phys::{Arena, PhysMem};
use crate::base::addr::PageSize;
use crate::frame::buddy::MigrateType;
use crate::mapping::vma::{HugePolicy, Mobility, VmaFlags};
use crate::ops::huge::collapse::{
    CollapseFailure, CollapseMethod, CollapseOptions, CollapseTarget, Collapsed,
};
use crate::ops::huge::compact::CompactError;
use crate::ops::huge::HugeError;
use std::sync::Arc;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const FRAMES: u64 = 8192;
const FILLER: u64 = 0x7000_0000_0000;
const VA: u64 = 0x4000_0000;

const COPY: CollapseOptions = CollapseOptions {
    target: CollapseTarget::Size2M,
    method: CollapseMethod::Copy,
};

/// Fill all memory with 4 KiB pages of a filler VMA of `mobility`, then unmap all but
/// the first in each 2 MiB block: no 2 MiB block stays free.
fn scatter<'a, M: PhysMem>(env: &Env<'a, M>, s: &Arc<AddressSpace<'a, M>>, mobility: Mobility) {
    let len = FRAMES * K4;
    let flags = VmaFlags {
        mobility,
        ..VmaFlags::private(HugePolicy::Never, true)
    };
    env.mm.map_anon(s, FILLER, len, flags).unwrap();
    let mut faulted = 0;
    while env.mm.handle_fault(s, FILLER + faulted * K4, true).is_ok() {
        faulted += 1;
    }
    let mut kept = std::collections::BTreeSet::new();
    for i in 0..faulted {
        let va = FILLER + i * K4;
        if !kept.insert(s.translate(va).unwrap().pa.as_u64() / M2) {
            env.mm.unmap(s, va, K4).unwrap();
        }
    }
}

/// A 2 MiB VMA faulted 4 KiB at a time, each page tagged.
fn target<'a, M: PhysMem>(env: &Env<'a, M>, s: &Arc<AddressSpace<'a, M>>) {
    let flags = VmaFlags::private(HugePolicy::OnRequest, true);
    env.mm.map_anon(s, VA, M2, flags).unwrap();
    for i in (0..512).rev() {
        env.mm.handle_fault(s, VA + i * K4, true).unwrap();
        assert!(write_user(env.mem, s, VA + i * K4 + 8, i ^ 0xc0ffee));
    }
}

fn no_free_2m_block<M: PhysMem>(env: &Env<'_, M>) -> bool {
    match env.mm.frames().alloc(9, MigrateType::Movable, None) {
        Ok(p) => {
            env.mm.frames().free(p, 9).unwrap();
            false
        }
        Err(_) => true,
    }
}

#[test]
fn the_copying_collapse_compacts_a_window_when_no_2m_block_is_free() {
    with_env(Arena::new(FRAMES), FRAMES, &[], |env| {
        let s = env.mm.new_space().unwrap();
        scatter(env, &s, Mobility::Movable);
        target(env, &s);
        assert!(
            no_free_2m_block(env),
            "the test needs memory without a free 2 MiB block"
        );
        let before = env.mm.vmstat();
        let out = env.mm.collapse(&s, VA, M2, &COPY).unwrap();
        assert_eq!(out[0].result, Ok(Collapsed::Copied));
        assert_eq!(s.translate(VA).unwrap().size, PageSize::Size2M);
        for i in 0..512 {
            assert_eq!(read_user(env.mem, &s, VA + i * K4 + 8), Some(i ^ 0xc0ffee));
        }
        let d = env.mm.vmstat().since(&before);
        let figures = [
            Event::CompactStall,
            Event::CompactSuccess,
            Event::CompactFail,
        ]
        .map(|e| d.get(e));
        assert_eq!(figures, [1, 1, 0]);
        assert!(d.get(Event::CompactMigrated) >= 1, "{d:?}");
        assert_eq!(d.get(Event::CollapseCopy2m), 1);
        env.audit();
    });
}

#[test]
fn with_a_pinned_page_in_every_2m_block_the_collapse_fails_typed_and_changes_nothing() {
    with_env(Arena::new(FRAMES), FRAMES, &[], |env| {
        let s = env.mm.new_space().unwrap();
        scatter(env, &s, Mobility::Pinned);
        target(env, &s);
        assert!(no_free_2m_block(env));
        let (leaves, free) = (s.leaves(), env.free_frames());
        let before = env.mm.vmstat();
        let out = env.mm.collapse(&s, VA, M2, &COPY).unwrap();
        assert_eq!(
            out[0].result,
            Err((
                CollapseFailure::NoMemory,
                HugeError::Compact(CompactError::NoWindow)
            ))
        );
        assert_eq!(
            (s.leaves(), env.free_frames()),
            (leaves, free),
            "nothing moved"
        );
        let d = env.mm.vmstat().since(&before);
        let figures = [
            Event::CompactStall,
            Event::CompactSuccess,
            Event::CompactFail,
            Event::CompactMigrated,
        ]
        .map(|e| d.get(e));
        assert_eq!(figures, [1, 0, 1, 0]);
        env.audit();
    });
}
