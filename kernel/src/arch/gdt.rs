//! Global descriptor table and task-state segment of each CPU.
//!
//! Each CPU's TSS points double fault, NMI and machine check at their own IST stacks, so
//! those exceptions run on a known-good stack even when the kernel stack has overflowed
//! into its guard page.

use core::cell::UnsafeCell;
use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slot of the double-fault stack.
pub const DOUBLE_FAULT_IST: u16 = 0;
/// IST slot of the NMI stack.
pub const NMI_IST: u16 = 1;
/// IST slot of the machine-check stack.
pub const MACHINE_CHECK_IST: u16 = 2;

const IST_STACK_SIZE: usize = 16 * 1024;

/// A statically allocated stack for the boot CPU's exception handlers.
#[repr(C, align(16))]
struct IstStack(UnsafeCell<[u8; IST_STACK_SIZE]>);

// SAFETY: the stack's bytes are only ever touched by the CPU while it runs the exception
// handler whose IST slot names it; Rust code never reads or writes them.
unsafe impl Sync for IstStack {}

impl IstStack {
    const fn new() -> IstStack {
        IstStack(UnsafeCell::new([0; IST_STACK_SIZE]))
    }

    fn top(&self) -> VirtAddr {
        VirtAddr::from_ptr(self.0.get()) + IST_STACK_SIZE as u64
    }
}

static BOOT_IST: [IstStack; 3] = [IstStack::new(), IstStack::new(), IstStack::new()];

/// The descriptor tables of one CPU.
pub struct CpuTables {
    gdt: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

static BOOT_TSS: Once<TaskStateSegment> = Once::new();
static BOOT_TABLES: Once<CpuTables> = Once::new();

/// A TSS whose IST entries are the given stack tops.
pub fn make_tss(ist_tops: [VirtAddr; 3]) -> TaskStateSegment {
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = ist_tops[0];
    tss.interrupt_stack_table[NMI_IST as usize] = ist_tops[1];
    tss.interrupt_stack_table[MACHINE_CHECK_IST as usize] = ist_tops[2];
    tss
}

/// Build a GDT (kernel code, kernel data, TSS) around `tss`.
pub fn make_tables(tss: &'static TaskStateSegment) -> CpuTables {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss = gdt.append(Descriptor::tss_segment(tss));
    CpuTables {
        gdt,
        code,
        data,
        tss,
    }
}

/// Load `tables` on the running CPU.
pub fn load(tables: &'static CpuTables) {
    tables.gdt.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded, which lives for
    // 'static; the TSS descriptor is loaded once per CPU.
    unsafe {
        CS::set_reg(tables.code);
        SS::set_reg(tables.data);
        DS::set_reg(tables.data);
        ES::set_reg(tables.data);
        load_tss(tables.tss);
    }
}

/// Give the boot CPU its GDT and TSS.
pub fn init_boot_cpu() {
    let tss = BOOT_TSS.call_once(|| make_tss(BOOT_IST.each_ref().map(IstStack::top)));
    load(BOOT_TABLES.call_once(|| make_tables(tss)));
}
