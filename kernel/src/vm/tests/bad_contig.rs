//! Bad input to contiguity generation: an unmapped address, a NUMA node that does not
//! exist, a VMA larger than any window (`NoRoom`), addresses outside the user half, a
//! destroyed address space: typed errors that change nothing (mappings, contents, free
//! frames, claimed windows, anchors). Then a VMA unmapped on another CPU while it is
//! made contiguous: a clean report (partial or complete) or `Changed` / `NotMapped`,
//! with its windows given back and the pages it was interleaved with intact.

use super::{
    activate, audits, available, deactivate, fail, private, snapshot, tag, tagged, Env, Space,
    BASE, G1, K4,
};
use crate::arch::percpu;
use crate::arch::timer;
use crate::harness::{TestContext, TestResult};
use crate::smp;
use crate::vm::numa;
use crate::{check, check_eq, skip, sprint};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use mm::aspace::SpaceError;
use mm::backend::source::FrameSource;
use mm::frame::node::NodeId;
use mm::mapping::vma::HugePolicy;
use mm::ops::contig::{ContigError, ContigOptions, Placement};

/// Pages of the VMA unmapped under contiguity generation, and of its neighbour.
const RACE_PAGES: u64 = 192;
/// How long the other CPU waits before the unmap, one attempt each, in eighths of the
/// time the same call takes undisturbed (the waiting CPU slows this one down under
/// emulation, so they reach well past it).
const DELAYS: [u64; 9] = [0, 8, 12, 14, 15, 16, 17, 18, 24];

pub(super) fn bad_contig(_: &TestContext) -> TestResult {
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let claimed = mm.claimed_windows();
    let s = env.space()?;
    let (small, big, unmapped) = (BASE, BASE + 64 * G1, BASE + G1);
    env.map(&s, small, 64 * K4, private(HugePolicy::Never))?;
    env.populate(&s, small, 64 * K4)?;
    // Twice all of memory, rounded to gigabytes: no window can hold it.
    let frames = crate::vm::frames().frame_table().len() as u64;
    let big_len = (2 * frames * K4).next_multiple_of(G1);
    env.map(&s, big, big_len, private(HugePolicy::Never))?;
    env.populate(&s, big, K4)?;
    check_eq!(activate(&s), Ok(()));
    check!(tag(small, 64 * K4, 1) && tag(big, K4, 2), "tagging");
    let heads: Vec<_> = [small, big]
        .iter()
        .filter_map(|&va| super::block_at(&s, va).map(|(h, _)| h))
        .collect();
    let snap = snapshot(&s, &heads);
    let nowhere = NodeId(1 + numa::nodes().last().map_or(0, |n| n.0));
    let opts = ContigOptions::default();
    let on = |placement| ContigOptions { placement, ..opts };
    let dead = mm
        .new_space()
        .map_err(|e| fail(format!("new_space: {e}")))?;
    check_eq!(mm.destroy_space(&dead), Ok(()));
    // Each call runs, then is checked, in turn.
    let cases: [(&str, u64, &ContigOptions, &Arc<Space>, ContigError); 7] = [
        ("unmapped", unmapped, &opts, &s, ContigError::NotMapped),
        (
            "no such node",
            small,
            &on(Placement::Node(nowhere)),
            &s,
            ContigError::NoSuchNode,
        ),
        (
            "larger than memory",
            big,
            &on(Placement::Anywhere),
            &s,
            ContigError::NoRoom,
        ),
        ("larger than its node", big, &opts, &s, ContigError::NoRoom),
        (
            "non-canonical",
            0x0000_8000_0000_0000,
            &opts,
            &s,
            ContigError::Space(SpaceError::NonCanonical),
        ),
        (
            "kernel half",
            0xFFFF_8000_0000_0000,
            &opts,
            &s,
            ContigError::Space(SpaceError::KernelHalf),
        ),
        (
            "destroyed space",
            small,
            &opts,
            &dead,
            ContigError::Space(SpaceError::SpaceDestroyed),
        ),
    ];
    for (what, va, o, space, want) in cases {
        let got = mm.make_vma_contiguous(space, va, o);
        check!(
            got.as_ref().err() == Some(&want),
            "{what}: {got:?}, expected {want:?}"
        );
        check_eq!(snapshot(&s, &heads), snap);
        check_eq!(mm.claimed_windows(), claimed);
        check!(
            s.vmas().iter().all(|v| v.anchor.is_none()),
            "{what}: a VMA kept an anchor"
        );
    }
    let whole = mm.make_space_contiguous(&dead, &opts);
    check!(
        matches!(whole, Err(ContigError::Space(SpaceError::SpaceDestroyed))),
        "make_space_contiguous of a destroyed space: {whole:?}"
    );
    check_eq!(mm.claimed_windows(), claimed);
    check!(
        tagged(small, 64 * K4, 1) && tagged(big, K4, 2),
        "contents changed"
    );
    deactivate();
    let raced = race(&mut env)?;
    env.teardown()?;
    audits(mm)?;
    check_eq!(mm.claimed_windows(), claimed);
    check_eq!(available(), before);
    match raced {
        Some(outcomes) => {
            sprint!(
                "(8 refusals, each typed and without effect; a VMA unmapped on another CPU: {outcomes}) "
            );
            Ok(())
        }
        None => {
            skip!("the 8 typed refusals passed; needs 2 CPUs for the VMA unmapped on another CPU")
        }
    }
}

/// Make a VMA W contiguous while another CPU unmaps it, once per delay; W's pages are
/// interleaved with those of a neighbour N, which must keep its contents. The outcomes,
/// or None with one CPU.
fn race(env: &mut Env) -> Result<Option<String>, crate::harness::TestError> {
    let me = percpu::cpu_index();
    let Some(cpu) = percpu::online().iter().find(|&c| c != me) else {
        return Ok(None);
    };
    let mm = env.mm;
    let s = env.space()?;
    let (w, n) = (BASE, BASE + G1);
    env.map(&s, n, RACE_PAGES * K4, private(HugePolicy::Never))?;
    let mut outcomes = Vec::new();
    let mut undisturbed_us = 0;
    // Attempt 0 measures the call undisturbed, the others race it.
    for attempt in 0..=DELAYS.len() {
        env.map(&s, w, RACE_PAGES * K4, private(HugePolicy::Never))?;
        for i in 0..RACE_PAGES {
            env.populate(&s, w + i * K4, K4)?;
            if attempt == 0 {
                env.populate(&s, n + i * K4, K4)?;
            }
        }
        if attempt == 0 {
            check_eq!(activate(&s), Ok(()));
            check!(tag(n, RACE_PAGES * K4, 7), "tagging N");
            deactivate();
            let started = timer::now_ns();
            let r = mm.make_vma_contiguous(&s, w, &ContigOptions::default());
            undisturbed_us = (timer::now_ns() - started) / 1_000;
            check!(r.is_ok_and(|r| r.moved() > 0), "undisturbed: nothing moved");
            check_eq!(mm.unmap(&s, w, RACE_PAGES * K4), Ok(()));
            continue;
        }
        let delay = undisturbed_us * DELAYS[attempt - 1] / 8;
        let space = s.clone();
        let pending = smp::run_on(cpu, move || {
            timer::delay_us(delay);
            mm.unmap(&space, w, RACE_PAGES * K4)
        })
        .map_err(|e| fail(format!("run_on {cpu}: {e:?}")))?;
        let r = mm.make_vma_contiguous(&s, w, &ContigOptions::default());
        check_eq!(pending.wait(), Ok(()));
        let outcome = match r {
            Ok(r) => format!(
                "report ({} of {} misplaced moved, {})",
                r.moved(),
                r.misplaced,
                if r.complete { "complete" } else { "partial" }
            ),
            Err(e @ (ContigError::Changed | ContigError::NotMapped)) => format!("{e:?}"),
            Err(e) => return Err(fail(format!("unmapped after {delay} µs: {e:?}"))),
        };
        outcomes.push(format!("{delay} µs: {outcome}"));
        check!(
            s.vmas().iter().all(|v| v.start != w),
            "W is still mapped after its unmap"
        );
        check_eq!(activate(&s), Ok(()));
        check!(tagged(n, RACE_PAGES * K4, 7), "N lost its contents");
        deactivate();
        check!(mm.rmap_audit().is_ok(), "{:?}", mm.rmap_audit());
    }
    check_eq!(mm.unmap(&s, n, RACE_PAGES * K4), Ok(()));
    Ok(Some(format!(
        "undisturbed {undisturbed_us} µs; unmap after {}",
        outcomes.join(", ")
    )))
}
