//! The snapshot built from runs of blocks against classifying each frame on its own:
//! memory holding small and huge user blocks, pinned and unmovable ones, kernel blocks,
//! free blocks of every order and other VMAs' claimed windows, viewed from ranges that
//! begin and end inside blocks.

use super::*;
use crate::aspace::testing::{with_env, Env};
use crate::backend::phys::Arena;
use crate::backend::source::FrameSource;
use crate::frame::buddy::MigrateType;
use crate::mapping::vma::{HugePolicy, Mobility, VmaFlags};
use alloc::vec::Vec;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const FRAMES: u64 = 8192;

/// The class of one frame found from its own record and its block's head, claims first.
fn frame_class<M: PhysMem>(env: &Env<'_, M>, pfn: Pfn, claimed: &[(Pfn, Pfn)]) -> FrameClass {
    if claimed.iter().any(|&(a, b)| a <= pfn && pfn < b) {
        return FrameClass::Claimed;
    }
    let table = env.frames.frame_table();
    let Some(head) = table.head_of(pfn) else {
        return FrameClass::Blocked;
    };
    let meta = table.get(head).expect("a head is in the table");
    match meta.state() {
        FrameState::Free => FrameClass::Free,
        FrameState::Allocated => block_class(meta),
        _ => FrameClass::Blocked,
    }
}

#[test]
fn runs_of_blocks_class_every_frame_as_its_own_block_does() {
    with_env(Arena::new(FRAMES), FRAMES, &[], |env| {
        let mm = env.mm;
        let s = mm.new_space().unwrap();
        let small = VmaFlags::private(HugePolicy::Never, true);
        let huge = VmaFlags::private(HugePolicy::Always, true);
        let pinned = VmaFlags {
            mobility: Mobility::Pinned,
            ..small.clone()
        };
        mm.map_anon(&s, G1, 300 * K4, small).unwrap();
        mm.map_anon(&s, 2 * G1, 2 * M2, huge).unwrap();
        mm.map_anon(&s, 3 * G1, 8 * K4, pinned).unwrap();
        // Interleave user pages with kernel blocks of several orders, some freed again.
        let mut kernel = Vec::new();
        for i in 0..300 {
            mm.populate(&s, G1 + i * K4, K4).unwrap();
            if i % 7 == 0 {
                let order = (i % 5) as u8;
                kernel.push((
                    env.frames
                        .alloc(order, MigrateType::Unmovable, None)
                        .unwrap(),
                    order,
                ));
            }
        }
        for (i, &(p, o)) in kernel.iter().enumerate() {
            if i % 3 == 0 {
                mm.free_block(p, o);
            }
        }
        mm.populate(&s, 2 * G1, 2 * M2).unwrap();
        mm.populate(&s, 3 * G1, 8 * K4).unwrap();
        mm.pin(&s, G1 + 5 * K4).unwrap();
        let own = mm.new_claim_id();
        let other = mm.new_claim_id();
        let windows = [(Pfn(700), Pfn(1300)), (Pfn(4000), Pfn(4100))];
        {
            let mut claims = mm.claims();
            claims.claim(windows[0].0, windows[0].1, other).unwrap();
            claims.claim(Pfn(2000), Pfn(2600), own).unwrap();
            claims.claim(windows[1].0, windows[1].1, other).unwrap();
        }
        let extra = [(Pfn(3000), Pfn(3100))];
        // Ranges beginning inside blocks (free and allocated, small and huge) and ending
        // a little past them, besides the whole table and odd ones.
        let table = env.frames.frame_table();
        let inside: Vec<(u64, u64)> = (0..FRAMES)
            .filter_map(|f| Some((f, table.get(Pfn(f))?)))
            .filter(|(_, m)| m.state().is_head() && m.order() > 0)
            .map(|(f, m)| (f + 1, f + (1 << m.order()) + 3))
            .collect();
        assert!(inside.len() > 4, "blocks of order > 0: {}", inside.len());
        let fixed = [
            (0, FRAMES),
            (1, FRAMES + 100),
            (513, 1537),
            (1000, 1001),
            (5, 5),
        ];
        for (lo, hi) in fixed.into_iter().chain(inside) {
            let (lo, hi) = (Pfn(lo), Pfn(hi));
            for (own, extra, claimed) in [
                (Some(own), &[][..], &windows[..]),
                (
                    Some(own),
                    &extra[..],
                    &[windows[0], windows[1], extra[0]][..],
                ),
                (Some(other), &[][..], &[(Pfn(2000), Pfn(2600))][..]),
            ] {
                let view = mm.phys_view_with(lo, hi, own, extra);
                let mut seen = [0u64; 4];
                for f in lo.0..hi.0 {
                    let want = frame_class(env, Pfn(f), claimed);
                    assert_eq!(view.class(Pfn(f)), want, "frame {f} of [{lo:?}, {hi:?})");
                    seen[want as usize] += 1;
                }
                if lo.0 == 0 && hi.0 == FRAMES {
                    assert!(seen.iter().all(|&n| n > 0), "every class present: {seen:?}");
                }
            }
        }
    });
}
