//! Moving a range to a NUMA node keeps huge pages huge.

use super::{
    activate, audits, available, block_at, fail, fill, free_1g_blocks, intact, private, snapshot,
    Env, Space, BASE, G1, K4, M2,
};
use crate::harness::{TestContext, TestResult};
use crate::vm::numa;
use crate::{check, check_eq, skip, sprint};
use alloc::format;
use alloc::vec::Vec;
use mm::aspace::SpaceError;
use mm::base::addr::{PageSize, Pfn};
use mm::frame::node::NodeId;
use mm::mapping::vma::{HugePolicy, VmaFlags};
use mm::ops::migrate::{Destination, MigrateError};

pub(super) fn numa_move(_: &TestContext) -> TestResult {
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let s = env.space()?;
    let nodes = numa::nodes();
    let first = nodes.first().copied().unwrap_or(NodeId(0));
    if nodes.len() < 2 {
        env.map(&s, BASE, 2 * M2, private(HugePolicy::Always))?;
        env.populate(&s, BASE, 2 * M2)?;
        let nowhere = NodeId(first.0 + 1);
        let snap = snapshot(&s, &[]);
        let r = mm.move_range_to_node(&s, BASE, 2 * M2, nowhere);
        check_eq!(r.err(), Some(SpaceError::NoSuchNode));
        check_eq!(snapshot(&s, &[]), snap);
        let head = block_at(&s, BASE).map(|(h, _)| h);
        check!(head.is_some());
        let r = mm.migrate_one(head.unwrap_or(Pfn(0)), Destination::Node(nowhere));
        check_eq!(r, Err(MigrateError::NoSuchNode));
        check_eq!(snapshot(&s, &[]), snap);
        env.teardown()?;
        audits(mm)?;
        check_eq!(available(), before);
        skip!("one NUMA node: nothing to move to (a move to a missing node is refused, typed)");
    }
    // 1 GiB + two 2 MiB pages (preferably on the first node), then four 4 KiB pages.
    let (start, len) = (BASE + G1, G1 + 2 * M2 + 4 * K4);
    let huge_len = G1 + 2 * M2;
    let flags = VmaFlags {
        node: Some(first),
        ..private(HugePolicy::Always)
    };
    env.map(&s, start, huge_len, flags)?;
    env.map(&s, start + huge_len, 4 * K4, private(HugePolicy::Never))?;
    let blocks = |s: &Space| -> Vec<(u64, PageSize, Option<NodeId>)> {
        s.leaves()
            .iter()
            .map(|(va, t)| (va.as_u64(), t.size, numa::node_of(Pfn::containing(t.pa))))
            .collect()
    };
    env.populate(&s, start, len)?;
    check_eq!(activate(&s), Ok(()));
    let pages: Vec<(u64, PageSize, u64)> = s
        .leaves()
        .iter()
        .enumerate()
        .map(|(i, (va, t))| (va.as_u64(), t.size, i as u64))
        .collect();
    for &(va, size, seed) in &pages {
        check!(fill(va, size, seed));
    }
    let initial = blocks(&s);
    check!(
        initial.iter().any(|b| b.1 == PageSize::Size1G),
        "no 1 GiB page: {} free 1 GiB blocks",
        free_1g_blocks()
    );
    sprint!("(before: ");
    report(&initial);
    // Move everything to the node the 1 GiB page is not on, then back.
    let home = initial[0].2.unwrap_or(first);
    let away = nodes.iter().copied().find(|&n| n != home).unwrap_or(home);
    for target in [away, home] {
        let r = mm.move_range_to_node(&s, start, len, target);
        let report_ = r.map_err(|e| fail(format!("move to node {}: {e:?}", target.0)))?;
        check!(report_.failed.is_empty(), "{:?}", report_.failed);
        let now = blocks(&s);
        check_eq!(now.len(), initial.len());
        for (b, i) in now.iter().zip(&initial) {
            check!(
                b.0 == i.0 && b.1 == i.1,
                "leaf {:#x} was {:?}, now {:?}",
                i.0,
                i.1,
                b.1
            );
            check_eq!(b.2, Some(target));
        }
        for &(va, size, seed) in &pages {
            check!(intact(va, size, seed), "{va:#x} lost data");
        }
        sprint!(
            " | moved {} blocks to node {}: ",
            report_.moved.len(),
            target.0
        );
        report(&now);
    }
    sprint!(") ");
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}

/// Print the leaves by node and the per-node usage, on the test's line.
fn report(leaves: &[(u64, PageSize, Option<NodeId>)]) {
    let usage = numa::usage();
    for (k, node) in numa::nodes().into_iter().enumerate() {
        let count = |size| {
            leaves
                .iter()
                .filter(|l| l.2 == Some(node) && l.1 == size)
                .count()
        };
        let used = usage
            .iter()
            .find(|u| u.node == node)
            .map_or(0, |u| (u.used * K4) >> 20);
        sprint!(
            "{}node {}: {}x1G {}x2M {}x4K, {used} MiB used",
            if k == 0 { "" } else { "; " },
            node.0,
            count(PageSize::Size1G),
            count(PageSize::Size2M),
            count(PageSize::Size4K)
        );
    }
}
