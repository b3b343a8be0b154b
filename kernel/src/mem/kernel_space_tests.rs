//! In-kernel tests of the kernel's address-space layout against the firmware's memory
//! map and the CPU's features: the linear map covers RAM only, with the largest leaves
//! the CPU supports; device registers are mapped once, uncached; user faults never map a
//! leaf larger than the CPU supports.

use super::kernel_space::{self, MMIO_BASE};
use crate::harness::{KernelTest, TestContext, TestError, TestResult};
use crate::{check, check_eq, skip};
use mm::base::addr::{PageSize, PAGE_SIZE};
use mm::mapping::vma::{HugePolicy, VmaFlags};
use mm::ops::fault::FaultOutcome;
use x86_64::structures::paging::PageTableFlags as F;
use x86_64::PhysAddr;

/// The tests of this module.
pub const TESTS: &[KernelTest] = &[
    KernelTest {
        name: "mem::linear_map_covers_only_ram_with_the_largest_leaves",
        run: linear_map_covers_only_ram,
    },
    KernelTest {
        name: "mem::device_registers_are_mapped_once_uncached",
        run: device_registers_mapped_once,
    },
    KernelTest {
        name: "mem::user_huge_faults_stay_within_the_cpu_leaf_sizes",
        run: user_faults_within_cpu_leaf_sizes,
    },
    KernelTest {
        name: "mem::heap_growth_failing_half_way_keeps_the_heap_usable",
        run: heap_growth_failing_half_way,
    },
];

/// A failed check with `message`, for errors found inside closures.
#[track_caller]
fn failure(message: alloc::string::String) -> TestError {
    let at = core::panic::Location::caller();
    TestError::Check {
        message,
        file: at.file(),
        line: at.line(),
    }
}

/// The next larger leaf size.
fn larger(size: PageSize) -> Option<PageSize> {
    match size {
        PageSize::Size4K => Some(PageSize::Size2M),
        PageSize::Size2M => Some(PageSize::Size1G),
        PageSize::Size1G => None,
    }
}

/// What was wrong with a leaf of the linear map.
#[derive(Debug)]
enum Bad {
    /// Maps something else than the physical address its place says.
    Misplaced,
    /// Covers bytes that are not RAM.
    NotRam,
    /// Not write-back.
    NotWriteBack,
    /// Larger than the CPU supports.
    TooLarge,
    /// A larger leaf would have fit inside the same RAM range.
    NotLargest,
}

fn linear_map_covers_only_ram(_: &TestContext) -> TestResult {
    let ram = &super::boot_memory().ram;
    let max = kernel_space::max_leaf();
    let base = crate::PHYS_MAP_BASE;
    // No allocation under the page-table lock (the heap takes it to grow).
    let walked = kernel_space::with_kernel(|pt, _| {
        let (mut leaves, mut bytes) = ([0u64; 3], 0u64);
        for (va, t) in pt.walk(base, base + kernel_space::LINEAR_MAX) {
            let (pa, size) = (va.as_u64() - base, t.size);
            let end = pa + size.bytes();
            let bad = if t.leaf_base_pa.as_u64() != pa {
                Some(Bad::Misplaced)
            } else if !ram.contains(pa, end) {
                Some(Bad::NotRam)
            } else if t.flags.intersects(F::NO_CACHE | F::WRITE_THROUGH) {
                Some(Bad::NotWriteBack)
            } else if size > max {
                Some(Bad::TooLarge)
            } else {
                larger(size).filter(|&l| l <= max).and_then(|l| {
                    let b = pa & !(l.bytes() - 1);
                    ram.contains(b, b + l.bytes()).then_some(Bad::NotLargest)
                })
            };
            if let Some(bad) = bad {
                return Err((bad, pa, size));
            }
            leaves[size as usize] += 1;
            bytes += size.bytes();
        }
        Ok((leaves, bytes))
    });
    let (leaves, bytes) = walked.map_err(|(bad, pa, size)| {
        failure(alloc::format!(
            "linear-map leaf {size:?} at pa {pa:#x}: {bad:?}"
        ))
    })?;
    let ram_bytes: u64 = ram.ranges().iter().map(|r| r.len()).sum();
    check_eq!(bytes, ram_bytes);
    crate::sprint!(
        "({} MiB: {} x 4K, {} x 2M, {} x 1G; CPU allows up to {max:?}) ",
        bytes >> 20,
        leaves[0],
        leaves[1],
        leaves[2]
    );
    Ok(())
}

fn device_registers_mapped_once(_: &TestContext) -> TestResult {
    let Some(rsdp) = super::boot_memory().rsdp else {
        skip!("the firmware gave no ACPI RSDP: no device addresses to check");
    };
    let ram = &super::boot_memory().ram;
    let registers = crate::arch::acpi::device_registers(PhysAddr::new(rsdp));
    check!(!registers.is_empty(), "the ACPI tables name no device");
    let x2apic = crate::arch::apic::is_x2apic();
    for &(name, pa) in &registers {
        let page = pa & !(PAGE_SIZE - 1);
        check!(
            !ram.overlaps(page, page + PAGE_SIZE),
            "{name} registers at {pa:#x} lie in RAM"
        );
        let (count, uncached, va) = kernel_space::with_kernel(|pt, _| {
            let (mut count, mut uncached, mut va) = (0, true, 0);
            for (v, t) in pt.walk(crate::PHYS_MAP_BASE, 0) {
                let leaf = t.leaf_base_pa.as_u64();
                if leaf <= page && page < leaf + t.size.bytes() {
                    count += 1;
                    uncached &= t.flags.contains(F::NO_CACHE);
                    va = v.as_u64();
                }
            }
            (count, uncached, va)
        });
        check!(
            count <= 1,
            "{name} page {page:#x} is mapped {count} times in the kernel half"
        );
        if name == "local APIC" && !x2apic {
            check_eq!(count, 1);
        }
        if count == 1 {
            check!(uncached, "{name} page {page:#x} is mapped cacheable");
            check_eq!(va, MMIO_BASE + page);
        }
    }
    crate::sprint!("({} devices) ", registers.len());
    Ok(())
}

fn user_faults_within_cpu_leaf_sizes(_: &TestContext) -> TestResult {
    let Some(mm) = crate::vm::mm() else {
        skip!("no memory manager");
    };
    let max = kernel_space::max_leaf();
    check_eq!(mm.max_leaf(), max);
    if max == PageSize::Size1G {
        skip!("the CPU has 1 GiB pages: the 2 MiB fallback runs under -cpu qemu64,-pdpe1gb");
    }
    let space = mm
        .new_space()
        .map_err(|e| crate::harness::TestError::Check {
            message: alloc::format!("new_space: {e}"),
            file: file!(),
            line: line!(),
        })?;
    let va = 1u64 << 30;
    let mapped = mm.map_anon(
        &space,
        va,
        1 << 30,
        VmaFlags::private(HugePolicy::Always, true),
    );
    let fault = mapped
        .is_ok()
        .then(|| mm.handle_fault(&space, va + (3 << 20), true));
    let destroyed = mm.destroy_space(&space);
    check!(mapped.is_ok(), "map_anon: {mapped:?}");
    check!(
        matches!(
            fault,
            Some(Ok(FaultOutcome::Mapped {
                size: PageSize::Size2M,
                ..
            }))
        ),
        "a 1 GiB-policy fault without 1 GiB pages: {fault:?}"
    );
    check!(destroyed.is_ok(), "destroy_space: {destroyed:?}");
    Ok(())
}

/// A heap of its own, above the kernel heap's reserved range, grown with a chunk source
/// that fails on its second chunk: the first chunk must be added, allocations must
/// still succeed, and the next growth must map right above it.
fn heap_growth_failing_half_way(_: &TestContext) -> TestResult {
    use super::heap::{back_chunk, grow_with, release, CHUNK};
    let base = kernel_space::HEAP_BASE + kernel_space::HEAP_MAX;
    let limit = base + 16 * CHUNK;
    let backed = back_chunk(base);
    check!(backed.is_ok(), "backing the first chunk: {backed:?}");
    let mut heap = linked_list_allocator::Heap::empty();
    // SAFETY: [base, base + CHUNK) was just mapped writable; nothing else uses this range.
    unsafe { heap.init(base as *mut u8, CHUNK as usize) };
    let mut calls = 0;
    let failed = grow_with(&mut heap, 3 * CHUNK as usize, limit, |va| {
        calls += 1;
        if calls == 2 {
            Err(super::MemError::OutOfFrames)
        } else {
            back_chunk(va)
        }
    });
    let after_failure = heap.size() as u64;
    let layout = core::alloc::Layout::from_size_align(CHUNK as usize + 4096, 8)
        .unwrap_or(core::alloc::Layout::new::<u64>());
    let fits = heap.allocate_first_fit(layout);
    let regrown = grow_with(&mut heap, CHUNK as usize, limit, back_chunk);
    let after_regrow = heap.size() as u64;
    let released = release(base, after_regrow.max(after_failure));
    check_eq!(failed, Err(super::MemError::OutOfFrames));
    check_eq!(after_failure, 2 * CHUNK);
    check!(
        fits.is_ok(),
        "an allocation into the chunk that was added failed"
    );
    check!(
        regrown.is_ok(),
        "growing again after the failure: {regrown:?}"
    );
    check!(after_regrow > after_failure, "the heap did not grow again");
    check!(released.is_ok(), "releasing the test heap: {released:?}");
    Ok(())
}
