//! Demand-zero faults at every page size on every CPU, and shared regions mapped in two
//! address spaces.

use super::{
    activate, audits, available, block_at, deactivate, fail, free_1g_blocks, need_mm, private,
    read, shared, value, write, Env, KernelMm, Space, BASE, G1, K4, M2, ORDER_1G,
};
use crate::arch::percpu;
use crate::arch::timer;
use crate::harness::{TestContext, TestResult};
use crate::mem::frames;
use crate::smp;
use crate::{check, check_eq, skip, sprint};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use mm::base::addr::{PageSize, Pfn};
use mm::frame::buddy::MigrateType;
use mm::mapping::vma::HugePolicy;

/// Touch `va` (reads zero, then a write reads back) and check the leaf that maps it.
fn touch(space: &Space, va: u64, want: PageSize) -> Result<(), String> {
    if read(va) != Some(0) {
        return Err(format!("{va:#x}: a fresh page must read zero"));
    }
    let v = value(va, 1, 0);
    if !write(va, v) || read(va) != Some(v) {
        return Err(format!("{va:#x}: write did not read back"));
    }
    let t = space
        .translate(va)
        .ok_or_else(|| format!("{va:#x}: not mapped after the fault"))?;
    if t.size != want {
        return Err(format!("{va:#x}: {:?} leaf, expected {want:?}", t.size));
    }
    if !t.leaf_base_pa.is_aligned(want.bytes())
        || t.pa.as_u64() - t.leaf_base_pa.as_u64() != va % want.bytes()
    {
        return Err(format!("{va:#x}: leaf at {:?} misaligned", t.leaf_base_pa));
    }
    Ok(())
}

/// On the running CPU: 4 KiB, 2 MiB, alignment fallback and on-request faults.
fn small_faults(mm: &'static KernelMm) -> Result<(), String> {
    let space = mm.new_space().map_err(|e| format!("new_space: {e}"))?;
    let result = (|| {
        let map = |start, len, huge| {
            mm.map_anon(&space, start, len, private(huge))
                .map_err(|e| format!("map_anon {start:#x}: {e}"))
        };
        map(BASE, 16 * K4, HugePolicy::Never)?;
        map(BASE + G1, 2 * M2, HugePolicy::Always)?;
        map(BASE + 2 * G1 + M2 / 2, 2 * M2, HugePolicy::Always)?;
        map(BASE + 3 * G1, 2 * M2, HugePolicy::OnRequest)?;
        activate(&space).map_err(|e| format!("activate: {e}"))?;
        let cases = [
            (BASE + 5 * K4 + 8, PageSize::Size4K),
            (BASE + G1 + 0x1_2340, PageSize::Size2M),
            (BASE + G1 + M2 + 8, PageSize::Size2M),
            // The 2 MiB around these is not inside the VMA: 4 KiB.
            (BASE + 2 * G1 + M2 / 2 + 8, PageSize::Size4K),
            (BASE + 2 * G1 + 2 * M2 + 16, PageSize::Size4K),
            (BASE + 2 * G1 + M2 + 0x8_0000, PageSize::Size2M),
            // On request: 4 KiB at fault time.
            (BASE + 3 * G1 + 8, PageSize::Size4K),
        ];
        for (va, want) in cases {
            touch(&space, va, want)?;
        }
        // The rest of a huge leaf is zero too, and mapped already.
        for va in [BASE + G1, BASE + G1 + M2 - 8, BASE + 2 * G1 + M2] {
            if read(va) != Some(0) {
                return Err(format!("{va:#x}: not zero"));
            }
        }
        // On request, populate maps the huge page.
        mm.populate(&space, BASE + 3 * G1 + M2, M2)
            .map_err(|e| format!("populate: {e}"))?;
        let t = space.translate(BASE + 3 * G1 + M2 + 8);
        if t.map(|t| t.size) != Some(PageSize::Size2M) {
            return Err(format!("populate on request mapped {t:?}"));
        }
        Ok(())
    })();
    deactivate();
    let destroyed = mm.destroy_space(&space);
    result?;
    destroyed.map_err(|e| format!("destroy_space: {e}"))
}

/// On the running CPU: a fault in a 1 GiB VMA must map a leaf of `want` (1 GiB when the
/// allocator has such a block, 2 MiB when it has none).
fn gib_fault(mm: &'static KernelMm, want: PageSize) -> Result<(), String> {
    let space = mm.new_space().map_err(|e| format!("new_space: {e}"))?;
    let result = (|| {
        mm.map_anon(&space, BASE + 4 * G1, G1, private(HugePolicy::Always))
            .map_err(|e| format!("map_anon: {e}"))?;
        activate(&space).map_err(|e| format!("activate: {e}"))?;
        touch(&space, BASE + 4 * G1 + G1 / 2 + 8, want)?;
        for va in [BASE + 4 * G1, BASE + 5 * G1 - 8] {
            if read(va) != Some(0) {
                return Err(format!("{va:#x}: not zero"));
            }
        }
        Ok(())
    })();
    deactivate();
    let destroyed = mm.destroy_space(&space);
    result?;
    destroyed.map_err(|e| format!("destroy_space: {e}"))
}

pub(super) fn demand_zero_faults(_: &TestContext) -> TestResult {
    let mm = need_mm()?;
    let before = available();
    let started = timer::now_ns();
    // Every CPU at once, each in its own address space.
    let results = smp::broadcast(move |_| small_faults(mm));
    check!(results.is_ok(), "broadcast: {results:?}");
    for (cpu, r) in results.unwrap_or_default() {
        check!(r.is_ok(), "CPU {cpu}: {}", r.err().unwrap_or_default());
    }
    // With every 1 GiB block taken, a fault in a 1 GiB VMA falls back to 2 MiB.
    let mut taken = Vec::new();
    while let Ok(pfn) = frames::alloc(ORDER_1G, MigrateType::Movable) {
        taken.push(pfn);
    }
    let fallback = gib_fault(mm, PageSize::Size2M);
    for &pfn in &taken {
        check_eq!(frames::free(pfn.addr(), ORDER_1G), Ok(()));
    }
    check_eq!(fallback, Ok(()));
    audits(mm)?;
    check_eq!(available(), before);
    if mm.max_leaf() < PageSize::Size1G {
        // A CPU without 1 GiB pages: a fault in a 1 GiB VMA maps 2 MiB even with 1 GiB
        // blocks free.
        let blocks = free_1g_blocks();
        check_eq!(gib_fault(mm, PageSize::Size2M), Ok(()));
        audits(mm)?;
        check_eq!(available(), before);
        sprint!(
            "(no 1 GiB pages on this CPU; {blocks} 1 GiB blocks free -> {:?}) ",
            PageSize::Size2M
        );
        return Ok(());
    }
    if free_1g_blocks() == 0 {
        skip!(
            "4 KiB and 2 MiB faults on every CPU and the 2 MiB fallback passed; no free 1 GiB block for the 1 GiB faults"
        );
    }
    // 1 GiB on each CPU in turn (each zeroes a whole gigabyte).
    let cpus = percpu::online();
    for cpu in cpus.iter() {
        let pending = smp::run_on(cpu, move || gib_fault(mm, PageSize::Size1G))
            .map_err(|e| fail(format!("run_on {cpu}: {e:?}")))?;
        let r = pending.wait();
        check!(r.is_ok(), "CPU {cpu}: {}", r.err().unwrap_or_default());
    }
    sprint!(
        "(a 1 GiB fault on each of {} CPUs; {} 1 GiB blocks taken away -> {:?}; {} ms) ",
        cpus.len(),
        taken.len(),
        PageSize::Size2M,
        (timer::now_ns() - started) / 1_000_000
    );
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}

// ---------------------------------------------------------------- shared regions

pub(super) fn shared_region(_: &TestContext) -> TestResult {
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let a = env.space()?;
    let b = env.space()?;
    let region = env.region(M2 + 2 * K4)?;
    let (va_a, va_b, va_b2) = (BASE + G1, BASE + 8 * G1, BASE + 9 * G1 + K4);
    env.map(&a, va_a, M2 + 2 * K4, shared(&region, HugePolicy::Always))?;
    env.map(&b, va_b, M2 + 2 * K4, shared(&region, HugePolicy::Always))?;
    // A second window in B at an address where no 2 MiB leaf fits.
    env.map(&b, va_b2, M2, shared(&region, HugePolicy::Always))?;
    let offsets = [0, 8, M2 / 2, M2 - 8, M2, M2 + K4 + 16];
    // Written through A on one CPU...
    let other = percpu::online().iter().find(|&c| c != 0).unwrap_or(0);
    let writer = {
        let a = a.clone();
        smp::run_on(other, move || {
            let ok =
                activate(&a).is_ok() && offsets.iter().all(|&o| write(va_a + o, value(o, 7, 0)));
            deactivate();
            ok
        })
    };
    let writer = writer.map_err(|e| fail(format!("run_on {other}: {e:?}")))?;
    check!(writer.wait(), "writes through A failed");
    // ...read through B on this one.
    check_eq!(activate(&b), Ok(()));
    for &o in &offsets {
        check_eq!(read(va_b + o), Some(value(o, 7, 0)));
    }
    check_eq!(read(va_b2 + M2 / 2), Some(value(M2 / 2, 7, 0)));
    let (ta, tb, tb2) = (
        a.translate(va_a + 8),
        b.translate(va_b + 8),
        b.translate(va_b2 + M2 / 2),
    );
    check!(
        ta.is_some() && ta.map(|t| t.pa) == tb.map(|t| t.pa),
        "{ta:?} vs {tb:?}"
    );
    check_eq!(ta.map(|t| t.size), Some(PageSize::Size2M));
    check_eq!(tb2.map(|t| t.size), Some(PageSize::Size4K));
    check_eq!(
        tb2.map(|t| t.pa.as_u64()),
        ta.map(|t| t.leaf_base_pa.as_u64() + M2 / 2)
    );
    let huge = block_at(&a, va_a).map(|(h, _)| h);
    let small = block_at(&a, va_a + M2).map(|(h, _)| h);
    check!(huge.is_some() && small.is_some());
    let (huge, small) = (huge.unwrap_or(Pfn(0)), small.unwrap_or(Pfn(0)));
    let spaces_of = |head| {
        let mut v: Vec<(u64, u64, PageSize)> = mm
            .rmap_of(head)
            .iter()
            .map(|e| (e.space.0, e.va.as_u64(), e.size))
            .collect();
        v.sort_unstable();
        v
    };
    let mut want = vec![
        (a.id().0, va_a, PageSize::Size2M),
        (b.id().0, va_b, PageSize::Size2M),
        (b.id().0, va_b2 + M2 / 2, PageSize::Size4K),
    ];
    want.sort_unstable();
    check_eq!(spaces_of(huge), want);
    check_eq!(spaces_of(small).len(), 2);
    check!(mm.rmap_audit().is_ok());
    // Unmapped from A: B keeps the frame and its contents.
    check_eq!(mm.unmap(&a, va_a, M2 + 2 * K4), Ok(()));
    check_eq!(
        spaces_of(huge),
        vec![
            (b.id().0, va_b, PageSize::Size2M),
            (b.id().0, va_b2 + M2 / 2, PageSize::Size4K)
        ]
    );
    check_eq!(read(va_b + M2 - 8), Some(value(M2 - 8, 7, 0)));
    check_eq!(block_at(&b, va_b).map(|(h, _)| h), Some(huge));
    sprint!("(one 2 MiB frame mapped 2M in A and B and 4K in B) ");
    drop(region);
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}
