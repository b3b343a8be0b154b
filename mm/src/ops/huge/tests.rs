//! Host tests of promotion and split in place: 4 KiB to 2 MiB and 2 MiB to 1 GiB after
//! contiguity generation, with contents, reverse map, counts and the allocator audited;
//! split then promote returns to the same mapping; every refusal is typed and changes
//! nothing.

use super::*;
use crate::aspace::testing::{read_user, with_env, write_user, Env, SparseMem};
use crate::backend::phys::Arena;
use crate::mapping::region::SharedRegion;
use crate::mapping::vma::{Mobility, SharedBacking, VmaFlags};
use crate::ops::contig::ContigOptions;
use std::sync::Arc;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

fn on_request() -> VmaFlags {
    VmaFlags::private(HugePolicy::OnRequest, true)
}

fn tag(va: u64) -> u64 {
    va ^ 0xfeed_0000_0000
}

/// Fault `[va, va + len)` in 4 KiB at a time, interleaved with a filler VMA, writing a
/// tag into every page; then make the VMA contiguous.
fn scattered_then_contiguous<'a, M: PhysMem>(
    env: &Env<'a, M>,
    s: &Arc<AddressSpace<'a, M>>,
    va: u64,
    len: u64,
) {
    let filler = 0x7000_0000_0000u64;
    env.mm
        .map_anon(s, filler, len, VmaFlags::private(HugePolicy::Never, true))
        .unwrap();
    for i in 0..len / K4 {
        env.mm.handle_fault(s, va + i * K4, true).unwrap();
        env.mm.handle_fault(s, filler + i * K4, true).unwrap();
        assert!(write_user(env.mem, s, va + i * K4 + 8, tag(va + i * K4)));
    }
    env.mm.unmap(s, filler, len).unwrap();
    let r = env
        .mm
        .make_vma_contiguous(s, va, &ContigOptions::default())
        .unwrap();
    assert_eq!(r.after.chunks, 1, "{r:?}");
}

fn check<'a, M: PhysMem>(env: &Env<'a, M>, s: &AddressSpace<'a, M>, va: u64, len: u64) {
    for i in 0..len / K4 {
        let v = va + i * K4;
        assert_eq!(read_user(env.mem, s, v + 8), Some(tag(v)), "{v:#x}");
    }
}

fn leaf<'a, M: PhysMem>(s: &AddressSpace<'a, M>, va: u64) -> (PageSize, u64) {
    let t = s.translate(va).unwrap();
    (t.size, t.leaf_base_pa.as_u64())
}

#[test]
fn promote_to_2m_then_split_then_promote_again_returns_to_the_same_mapping() {
    with_env(Arena::new(8192), 8192, &[], |env| {
        let s = env.mm.new_space().unwrap();
        let va = 0x4000_0000u64;
        env.mm.map_anon(&s, va, M2, on_request()).unwrap();
        scattered_then_contiguous(env, &s, va, M2);
        let before = env.mm.vmstat();
        let vma_leaves = || {
            let r = env
                .mm
                .leaf_reports(&s)
                .into_iter()
                .find(|r| r.start == va)
                .unwrap();
            (r.leaves_4k, r.leaves_2m, r.leaves_1g, r.entries())
        };
        assert_eq!(vma_leaves(), (512, 0, 0, 512));
        assert_eq!(env.mm.promote(&s, va, PageSize::Size2M), Ok(()));
        assert_eq!(vma_leaves(), (0, 1, 0, 1));
        let (size, pa) = leaf(&s, va);
        assert_eq!(size, PageSize::Size2M);
        let head = Pfn::containing(x86_64::PhysAddr::new(pa));
        assert_eq!(env.mm.meta(head).unwrap().order(), 9);
        assert_eq!(env.mm.rmap_of(head).len(), 1);
        check(env, &s, va, M2);
        env.audit();
        assert_eq!(env.mm.split_huge(&s, va), Ok(PageSize::Size4K));
        assert_eq!(leaf(&s, va + 5 * K4), (PageSize::Size4K, pa + 5 * K4));
        assert_eq!(env.mm.meta(head.add(5)).unwrap().order(), 0);
        check(env, &s, va, M2);
        env.audit();
        assert_eq!(env.mm.promote(&s, va, PageSize::Size2M), Ok(()));
        assert_eq!(
            leaf(&s, va),
            (PageSize::Size2M, pa),
            "the same mapping again"
        );
        let d = env.mm.vmstat().since(&before);
        assert_eq!((d.get(Event::Promote2m), d.get(Event::Split2m)), (2, 1));
        // A promoted block is freed whole when unmapped.
        let free = env.free_frames();
        env.mm.unmap(&s, va, M2).unwrap();
        assert!(
            env.free_frames() >= free + 512,
            "the 2 MiB block went back whole"
        );
        env.audit();
    });
}

#[test]
fn promote_512_2m_leaves_to_1g_and_split_back() {
    const BIG: u64 = 3 << 18;
    with_env(SparseMem::new(BIG), BIG, &[], |env| {
        let s = env.mm.new_space().unwrap();
        let va = G1;
        env.mm
            .map_anon(&s, va, G1, VmaFlags::private(HugePolicy::Always, true))
            .unwrap();
        env.mm.set_max_leaf(PageSize::Size2M);
        env.mm.populate(&s, va, G1).unwrap();
        env.mm.set_max_leaf(PageSize::Size1G);
        for i in [0, 1, 255, 511] {
            assert!(write_user(env.mem, &s, va + i * M2 + 16, tag(i)));
        }
        let r = env
            .mm
            .make_vma_contiguous(&s, va, &ContigOptions::default())
            .unwrap();
        assert_eq!(r.after.aligned_1g, 1, "{r:?}");
        assert_eq!(env.mm.promote(&s, va, PageSize::Size1G), Ok(()));
        let (size, pa) = leaf(&s, va);
        assert_eq!(size, PageSize::Size1G);
        for i in [0, 1, 255, 511] {
            assert_eq!(read_user(env.mem, &s, va + i * M2 + 16), Some(tag(i)));
        }
        env.audit();
        assert_eq!(env.mm.split_huge(&s, va + 3 * M2), Ok(PageSize::Size2M));
        assert_eq!(leaf(&s, va + 3 * M2), (PageSize::Size2M, pa + 3 * M2));
        env.audit();
        assert_eq!(env.mm.promote(&s, va, PageSize::Size1G), Ok(()));
        assert_eq!(leaf(&s, va), (PageSize::Size1G, pa));
        env.audit();
    });
}

#[test]
fn every_refusal_is_typed_and_changes_nothing() {
    with_env(Arena::new(8192), 8192, &[], |env| {
        let s = env.mm.new_space().unwrap();
        let va = 0x4000_0000u64;
        env.mm.map_anon(&s, va, M2, on_request()).unwrap();
        let never = 0x8000_0000u64;
        env.mm
            .map_anon(&s, never, M2, VmaFlags::private(HugePolicy::Never, true))
            .unwrap();
        let pinned = 0xc000_0000u64;
        let pinned_flags = VmaFlags {
            mobility: Mobility::Pinned,
            ..on_request()
        };
        env.mm.map_anon(&s, pinned, M2, pinned_flags).unwrap();
        let region = SharedRegion::new(M2).unwrap();
        let shared = 0x1_0000_0000u64;
        let shared_flags = VmaFlags {
            shared: Some(SharedBacking {
                region: region.clone(),
                offset: 0,
            }),
            ..on_request()
        };
        env.mm.map_anon(&s, shared, M2, shared_flags).unwrap();
        // Interleaved, not contiguous.
        for i in 0..512 {
            for base in [va, never, pinned] {
                env.mm.handle_fault(&s, base + i * K4, true).unwrap();
            }
        }
        let leaves = s.leaves();
        let p = |v, size| env.mm.promote(&s, v, size);
        assert!(matches!(
            p(va, PageSize::Size2M),
            Err(HugeError::NotContiguous(_))
        ));
        assert_eq!(p(va, PageSize::Size4K), Err(HugeError::BadSize));
        assert_eq!(p(va + K4, PageSize::Size2M), Err(HugeError::Unaligned));
        assert_eq!(p(never, PageSize::Size2M), Err(HugeError::NeverHuge));
        assert_eq!(
            p(0x2_0000_0000, PageSize::Size2M),
            Err(HugeError::NotMapped)
        );
        assert!(matches!(
            p(shared, PageSize::Size2M),
            Err(HugeError::NotContiguous(CollapseError::Hole { .. }))
        ));
        assert_eq!(
            p(va, PageSize::Size1G),
            Err(HugeError::NotMapped),
            "the VMA is 2 MiB"
        );
        assert_eq!(p(va + M2, PageSize::Size1G), Err(HugeError::Unaligned));
        assert!(matches!(
            p(pinned, PageSize::Size2M),
            Err(HugeError::NotContiguous(_) | HugeError::Unmovable)
        ));
        assert_eq!(s.leaves(), leaves, "refusals change no mapping");
        // Contiguous now, but one page pinned, then one page unmapped.
        let r = env
            .mm
            .make_vma_contiguous(&s, va, &ContigOptions::default())
            .unwrap();
        assert_eq!(r.after.chunks, 1);
        let pin = env.mm.pin(&s, va + 77 * K4).unwrap();
        let leaves = s.leaves();
        assert_eq!(p(va, PageSize::Size2M), Err(HugeError::Pinned));
        assert_eq!(s.leaves(), leaves);
        env.mm.unpin(pin).unwrap();
        env.mm.unmap(&s, va + 100 * K4, K4).unwrap();
        assert!(matches!(
            p(va, PageSize::Size2M),
            Err(HugeError::NotMapped | HugeError::NotContiguous(CollapseError::Hole { .. }))
        ));
        assert_eq!(env.mm.split_huge(&s, va), Err(HugeError::BadSize));
        env.audit();
    });
}

mod collapse {
    use super::*;
    use crate::ops::huge::collapse::{
        CollapseFailure, CollapseMethod, CollapseOptions, CollapseTarget, Collapsed,
    };

    fn opts(method: CollapseMethod) -> CollapseOptions {
        CollapseOptions {
            target: CollapseTarget::Size2M,
            method,
        }
    }

    /// Two 2 MiB ranges of 4 KiB pages scattered among a filler's.
    fn scattered<'a, M: PhysMem>(env: &Env<'a, M>, s: &Arc<AddressSpace<'a, M>>, va: u64) {
        let filler = 0x7000_0000_0000u64;
        env.mm.map_anon(s, va, 2 * M2, on_request()).unwrap();
        env.mm
            .map_anon(
                s,
                filler,
                2 * M2,
                VmaFlags::private(HugePolicy::Never, true),
            )
            .unwrap();
        for i in 0..2 * M2 / K4 {
            env.mm.handle_fault(s, va + i * K4, true).unwrap();
            env.mm.handle_fault(s, filler + i * K4, true).unwrap();
            assert!(write_user(env.mem, s, va + i * K4 + 8, tag(va + i * K4)));
        }
    }

    #[test]
    fn in_place_and_copying_collapse_both_end_huge_with_the_data() {
        for (method, want) in [
            (CollapseMethod::Auto, Collapsed::InPlace),
            (CollapseMethod::InPlace, Collapsed::InPlace),
            (CollapseMethod::Copy, Collapsed::Copied),
        ] {
            with_env(Arena::new(8192), 8192, &[], |env| {
                let s = env.mm.new_space().unwrap();
                let va = 0x4000_0000u64;
                scattered(env, &s, va);
                let before = env.mm.vmstat();
                let out = env.mm.collapse(&s, va, 2 * M2, &opts(method)).unwrap();
                assert_eq!(out.len(), 2);
                // The second range: in place it was made contiguous with the first.
                assert_eq!(out[0].result, Ok(want), "{method:?}");
                assert!(out[1].result.is_ok(), "{method:?}: {:?}", out[1]);
                for r in &out {
                    assert_eq!(s.translate(r.start).unwrap().size, PageSize::Size2M);
                }
                check(env, &s, va, 2 * M2);
                let d = env.mm.vmstat().since(&before);
                let counted = match want {
                    Collapsed::Copied => d.get(Event::CollapseCopy2m),
                    _ => d.get(Event::CollapseInPlace2m),
                };
                assert!(counted >= 1, "{method:?}: {}", d.json());
                env.audit();
            });
        }
    }

    #[test]
    fn never_huge_pinned_unaligned_and_missing_pages() {
        with_env(Arena::new(8192), 8192, &[], |env| {
            let s = env.mm.new_space().unwrap();
            let never = 0x8000_0000u64;
            env.mm
                .map_anon(&s, never, M2, VmaFlags::private(HugePolicy::Never, true))
                .unwrap();
            let out = env
                .mm
                .collapse(&s, never, M2, &opts(CollapseMethod::Auto))
                .unwrap();
            assert_eq!(
                out[0].result,
                Err((CollapseFailure::Invalid, HugeError::NeverHuge))
            );
            assert!(s.leaves().is_empty(), "nothing faulted in a never-huge VMA");
            // Clamped to huge alignment: nothing whole inside.
            let va = 0x4000_0000u64;
            env.mm.map_anon(&s, va, 2 * M2, on_request()).unwrap();
            let out = env
                .mm
                .collapse(&s, va + K4, M2, &opts(CollapseMethod::Auto))
                .unwrap();
            assert!(out.is_empty());
            // Missing pages are faulted in.
            let out = env
                .mm
                .collapse(&s, va, M2, &opts(CollapseMethod::Auto))
                .unwrap();
            assert!(out[0].result.is_ok(), "{out:?}");
            assert_eq!(s.translate(va).unwrap().size, PageSize::Size2M);
            // A pinned page: transient.
            for i in 0..512 {
                env.mm.handle_fault(&s, va + M2 + i * K4, true).unwrap();
            }
            let pin = env.mm.pin(&s, va + M2 + 9 * K4).unwrap();
            let out = env
                .mm
                .collapse(&s, va + M2, M2, &opts(CollapseMethod::Copy))
                .unwrap();
            assert!(
                matches!(out[0].result, Err((CollapseFailure::Busy, _))),
                "{out:?}"
            );
            env.mm.unpin(pin).unwrap();
            assert_eq!(
                env.mm
                    .collapse(&s, u64::MAX - 4095, 4096, &opts(CollapseMethod::Auto)),
                Err(SpaceError::KernelHalf)
            );
            env.audit();
        });
    }

    #[test]
    fn the_largest_target_reaches_1g_through_2m() {
        const BIG: u64 = 3 << 18;
        for method in [CollapseMethod::InPlace, CollapseMethod::Copy] {
            with_env(SparseMem::new(BIG), BIG, &[], |env| {
                let s = env.mm.new_space().unwrap();
                let va = G1;
                env.mm
                    .map_anon(&s, va, G1, VmaFlags::private(HugePolicy::Always, true))
                    .unwrap();
                env.mm.set_max_leaf(PageSize::Size2M);
                env.mm.populate(&s, va, G1).unwrap();
                env.mm.set_max_leaf(PageSize::Size1G);
                assert!(write_user(env.mem, &s, va + 300 * M2 + 8, 42));
                let largest = CollapseOptions {
                    target: CollapseTarget::Largest,
                    method,
                };
                let out = env.mm.collapse(&s, va, G1, &largest).unwrap();
                assert_eq!(out.len(), 1);
                assert!(out[0].result.is_ok(), "{method:?}: {out:?}");
                assert_eq!(s.translate(va).unwrap().size, PageSize::Size1G);
                assert_eq!(read_user(env.mem, &s, va + 300 * M2 + 8), Some(42));
                env.audit();
            });
        }
    }
}

mod daemon {
    use super::*;
    use crate::ops::huge::daemon::{Daemon, Tuning, TuningError, MAX_PAGES_PER_STEP};

    #[test]
    fn the_daemon_makes_always_vmas_huge_by_itself_within_its_limits() {
        with_env(Arena::new(8192), 8192, &[], |env| {
            let s = env.mm.new_space().unwrap();
            let (va, filler) = (0x4000_0000u64, 0x7000_0000_0000u64);
            env.mm
                .map_anon(&s, va, 3 * M2, VmaFlags::private(HugePolicy::Always, true))
                .unwrap();
            env.mm
                .map_anon(
                    &s,
                    filler,
                    3 * M2,
                    VmaFlags::private(HugePolicy::Never, true),
                )
                .unwrap();
            // 4 KiB pages, scattered; the third range has 100 pages missing.
            env.mm.set_max_leaf(PageSize::Size4K);
            for i in 0..3 * 512 - 100 {
                env.mm.handle_fault(&s, va + i * K4, true).unwrap();
                env.mm.handle_fault(&s, filler + i * K4, true).unwrap();
                assert!(write_user(env.mem, &s, va + i * K4 + 8, tag(va + i * K4)));
            }
            env.mm.set_max_leaf(PageSize::Size1G);
            let daemon = Daemon::new(Tuning {
                pages_per_step: 512,
                sleep_ms: 0,
                max_ptes_none: 64,
            })
            .unwrap();
            assert_eq!(
                daemon.step(env.mm).scanned,
                0,
                "a stopped daemon does nothing"
            );
            daemon.start();
            let mut steps = 0;
            let mut promoted = 0;
            loop {
                let step = daemon.step(env.mm);
                assert!(step.scanned <= 512);
                promoted += step.promoted_2m;
                steps += 1;
                if step.full_pass {
                    break;
                }
                assert!(steps < 100, "the pass ends");
            }
            assert_eq!(
                promoted, 2,
                "the range with 100 missing pages is past max_ptes_none"
            );
            assert!(steps >= 3, "bounded steps: {steps}");
            assert_eq!(s.translate(va).unwrap().size, PageSize::Size2M);
            assert_eq!(s.translate(va + 2 * M2).unwrap().size, PageSize::Size4K);
            // Retuned while running: bad settings are refused, good ones taken.
            let keep = daemon.tuning();
            let bad = |t: Tuning| daemon.retune(t);
            assert_eq!(
                bad(Tuning {
                    pages_per_step: 0,
                    ..keep
                }),
                Err(TuningError::ZeroRate)
            );
            assert_eq!(
                bad(Tuning {
                    pages_per_step: MAX_PAGES_PER_STEP + 1,
                    ..keep
                }),
                Err(TuningError::RateTooHigh)
            );
            assert_eq!(
                bad(Tuning {
                    sleep_ms: u64::MAX,
                    ..keep
                }),
                Err(TuningError::SleepTooLong)
            );
            assert_eq!(
                bad(Tuning {
                    max_ptes_none: 512,
                    ..keep
                }),
                Err(TuningError::MaxPtesNone)
            );
            assert_eq!(daemon.tuning(), keep);
            daemon
                .retune(Tuning {
                    max_ptes_none: 511,
                    ..keep
                })
                .unwrap();
            while !daemon.step(env.mm).full_pass {}
            assert_eq!(s.translate(va + 2 * M2).unwrap().size, PageSize::Size2M);
            check(env, &s, va, 3 * M2 - 100 * K4);
            let stat = env.mm.vmstat();
            assert!(stat.get(Event::DaemonFullPasses) >= 2);
            assert_eq!(stat.get(Event::Promote2m), 3);
            daemon.stop();
            assert_eq!(daemon.step(env.mm), Default::default());
            env.audit();
        });
    }
    #[test]
    fn the_daemon_leaves_huge_on_request_vmas_alone_until_advised_always() {
        with_env(Arena::new(4096), 4096, &[], |env| {
            let s = env.mm.new_space().unwrap();
            let va = 0x4000_0000u64;
            env.mm.map_anon(&s, va, 3 * M2, on_request()).unwrap();
            for i in 0..3 * 512 {
                env.mm.handle_fault(&s, va + i * K4, true).unwrap();
            }
            let daemon = Daemon::new(Tuning::default()).unwrap();
            daemon.start();
            while !daemon.step(env.mm).full_pass {}
            assert_eq!(s.translate(va + M2).unwrap().size, PageSize::Size4K);
            assert_eq!(
                env.mm
                    .advise_huge(&s, u64::MAX - 4095, 4096, HugePolicy::Always),
                Err(SpaceError::KernelHalf)
            );
            env.mm
                .advise_huge(&s, va + M2, M2, HugePolicy::Always)
                .unwrap();
            let policies: Vec<(u64, HugePolicy)> =
                s.vmas().iter().map(|v| (v.start, v.flags.huge)).collect();
            assert_eq!(
                policies,
                [
                    (va, HugePolicy::OnRequest),
                    (va + M2, HugePolicy::Always),
                    (va + 2 * M2, HugePolicy::OnRequest)
                ]
            );
            while !daemon.step(env.mm).full_pass {}
            assert_eq!(s.translate(va).unwrap().size, PageSize::Size4K);
            assert_eq!(s.translate(va + M2).unwrap().size, PageSize::Size2M);
            assert_eq!(s.translate(va + 2 * M2).unwrap().size, PageSize::Size4K);
            env.audit();
        });
    }

    #[test]
    fn the_daemon_makes_scattered_2m_blocks_of_a_gigabyte_contiguous_and_promotes_it() {
        const BIG: u64 = 3 << 18;
        with_env(SparseMem::new(BIG), BIG, &[], |env| {
            let s = env.mm.new_space().unwrap();
            let va = G1;
            env.mm
                .map_anon(&s, va, G1, VmaFlags::private(HugePolicy::Always, true))
                .unwrap();
            env.mm.set_max_leaf(PageSize::Size2M);
            env.mm.populate(&s, va, G1).unwrap();
            for i in [0u64, 7, 300, 511] {
                assert!(write_user(env.mem, &s, va + i * M2 + 8, tag(va + i * M2)));
            }
            // Scatter: swap 2 MiB blocks, so the gigabyte's leaves are all 2 MiB but no
            // longer contiguous.
            let head = |i: u64| Pfn::containing(s.translate(va + i * M2).unwrap().leaf_base_pa);
            env.mm.exchange(head(0), head(511)).unwrap();
            env.mm.exchange(head(7), head(300)).unwrap();
            env.mm.set_max_leaf(PageSize::Size1G);
            assert!(matches!(
                env.mm.promote(&s, va, PageSize::Size1G),
                Err(HugeError::NotContiguous(_))
            ));
            let daemon = Daemon::new(Tuning {
                pages_per_step: 512,
                sleep_ms: 0,
                max_ptes_none: 0,
            })
            .unwrap();
            daemon.start();
            let (mut steps, mut placed, mut placing_steps, mut promoted) = (0, 0, 0, 0);
            while s.translate(va).unwrap().size != PageSize::Size1G {
                let step = daemon.step(env.mm);
                placed += step.placed;
                placing_steps += u64::from(step.placed > 0);
                promoted += step.promoted_1g;
                steps += 1;
                assert!(steps < 2000, "the daemon reaches the 1 GiB leaf");
            }
            assert_eq!(promoted, 1);
            assert!(
                placed >= 4 * 512,
                "four blocks misplaced, {placed} pages moved"
            );
            assert!(
                placing_steps >= 2,
                "contiguity generation bounded per step: {placing_steps} steps"
            );
            for i in [0u64, 7, 300, 511] {
                assert_eq!(
                    read_user(env.mem, &s, va + i * M2 + 8),
                    Some(tag(va + i * M2))
                );
            }
            env.audit();
        });
    }
}

mod churn {
    use super::*;
    use crate::ops::huge::churn::{Churn, Policy};

    #[test]
    fn contiguity_and_promotion_keep_memory_huge_and_copy_less_than_copying_collapse() {
        const FRAMES: u64 = 1 << 15;
        let w = Churn {
            rounds: 8,
            spaces_per_round: 2,
            vma_bytes: 8 * M2,
            keep: 2,
            small_pages: 3000,
            holes: 2,
            seed: 7,
        };
        let mut copied = std::vec::Vec::new();
        for policy in [
            Policy::FaultOnly,
            Policy::CopyCollapse,
            Policy::ContigPromote,
        ] {
            let rounds = with_env(SparseMem::new(FRAMES), FRAMES, &[], |env| {
                let r = env.mm.churn(policy, &w).unwrap();
                let stat = env.mm.vmstat();
                std::println!(
                    "churn {}: compact_stall {} compact_success {} compact_fail {} compact_migrated {}",
                    policy.name(),
                    stat.get(Event::CompactStall),
                    stat.get(Event::CompactSuccess),
                    stat.get(Event::CompactFail),
                    stat.get(Event::CompactMigrated)
                );
                env.audit();
                assert_eq!(
                    env.free_frames() as u64,
                    FRAMES - 1,
                    "everything given back"
                );
                r
            });
            for (i, r) in rounds.iter().enumerate() {
                std::println!(
                    "churn {} round {i}: huge {}.{}% of {} MiB, copied {} KiB",
                    policy.name(),
                    r.huge_per_mille() / 10,
                    r.huge_per_mille() % 10,
                    r.resident >> 20,
                    r.copied >> 10
                );
            }
            if policy == Policy::ContigPromote {
                for r in &rounds {
                    assert!(r.huge_per_mille() >= 900, "{rounds:?}");
                }
            }
            copied.push(rounds.iter().map(|r| r.copied).sum::<u64>());
        }
        assert!(
            copied[2] < copied[1],
            "in place copies less than copying: {copied:?}"
        );
    }
}

#[test]
fn discarding_a_page_of_a_huge_block_splits_it_and_gives_the_frame_back() {
    with_env(Arena::new(8192), 8192, &[], |env| {
        let s = env.mm.new_space().unwrap();
        let va = 0x4000_0000u64;
        env.mm
            .map_anon(&s, va, M2, VmaFlags::private(HugePolicy::Always, true))
            .unwrap();
        env.mm.populate(&s, va, M2).unwrap();
        assert!(write_user(env.mem, &s, va + 9 * K4, 99));
        let (size, pa) = leaf(&s, va);
        assert_eq!(size, PageSize::Size2M);
        let free = env.free_frames();
        env.mm.discard(&s, va + 3 * K4, K4).unwrap();
        assert_eq!(
            env.free_frames(),
            free + 1 - 1,
            "one frame back, one table taken"
        );
        let dropped = Pfn::containing(x86_64::PhysAddr::new(pa + 3 * K4));
        assert_eq!(
            env.mm.meta(dropped).unwrap().state(),
            crate::frame::meta::FrameState::Free
        );
        assert_eq!(s.vmas().len(), 1, "the VMA stays");
        assert!(s.translate(va + 3 * K4).is_none());
        assert_eq!(read_user(env.mem, &s, va + 9 * K4), Some(99));
        env.mm.handle_fault(&s, va + 3 * K4, true).unwrap();
        assert_eq!(
            read_user(env.mem, &s, va + 3 * K4),
            Some(0),
            "a zero page again"
        );
        env.audit();
    });
}
