//! ACPI tables: the `acpi` crate finds them (through the access the memory layer hands
//! in with [`super::set_phys_access`]: the linear map, or the firmware window for tables
//! outside RAM); their entries are decoded by `fwparse` from a copy of
//! the table's bytes, so a corrupt table cannot make the kernel read out of bounds.
//! From the MADT: which processors to start, and where the interrupt controllers are.
//!
//! The crate is built without its AML interpreter; of [`acpi::Handler`] it then only
//! maps tables. The register, port and PCI accessors it also requires are implemented
//! plainly (registers mapped through that access, port I/O, PCI configuration
//! mechanism #1) so that the handler stays correct if the interpreter is turned on.

use crate::arch::percpu::MAX_CPUS;
use acpi::sdt::madt::Madt;
use acpi::{AcpiTable, AcpiTables, PciAddress, PhysicalMapping};
use alloc::vec::Vec;
use core::ops::Not;
use core::ptr::NonNull;
use fwparse::acpi::{madt_entries, MadtEntry, MADT_ENTRIES_OFFSET, MADT_LAPIC_ADDRESS_OFFSET};
use spin::Mutex;
use x86_64::instructions::port::{Port, PortRead, PortWrite};
use x86_64::PhysAddr;

/// Gives the `acpi` crate access to physical memory through the linear map.
#[derive(Clone, Copy, Debug)]
pub struct PhysMapHandler;

/// Where the registers of `size_of::<T>()` bytes at `address` are mapped (uncached).
fn register_ptr<T>(address: usize) -> Option<*mut T> {
    let pa = PhysAddr::try_new(address as u64).ok()?;
    super::map_registers(pa, core::mem::size_of::<T>() as u64).map(|va| va.as_mut_ptr())
}

/// A register read; all ones (as from an absent device) if it cannot be mapped.
fn mem_read<T: Default + Not<Output = T>>(address: usize) -> T {
    match register_ptr::<T>(address) {
        // SAFETY: the crate only names registers the firmware's tables describe, mapped
        // uncached above.
        Some(p) => unsafe { p.read_volatile() },
        None => !T::default(),
    }
}

/// A register write; dropped if it cannot be mapped.
fn mem_write<T>(address: usize, value: T) {
    if let Some(p) = register_ptr::<T>(address) {
        // SAFETY: as in `mem_read`; writing a firmware-described register is what the
        // firmware's tables ask for.
        unsafe { p.write_volatile(value) }
    }
}

/// What a table the firmware window cannot reach reads as: zeros, which no table's
/// signature matches, so the crate refuses it.
static NOTHING: [u64; 512] = [0; 512];

fn io_read<T: PortRead>(port: u16) -> T {
    // SAFETY: the port is one the firmware's tables describe.
    unsafe { Port::<T>::new(port).read() }
}

fn io_write<T: PortWrite>(port: u16, value: T) {
    // SAFETY: as in `io_read`.
    unsafe { Port::<T>::new(port).write(value) }
}

/// The CONFIG_ADDRESS/CONFIG_DATA pair is one shared register window.
static PCI_CONFIG: Mutex<()> = Mutex::new(());

/// Run `f` with CONFIG_ADDRESS selecting `offset` of `address`; `f` gets the data port.
/// None if mechanism #1 cannot reach it (segment other than 0, offset past 255).
fn pci_config<R>(address: PciAddress, offset: u16, f: impl FnOnce(u16) -> R) -> Option<R> {
    if address.segment() != 0 || offset > 0xFF {
        return None;
    }
    let select = 0x8000_0000
        | u32::from(address.bus()) << 16
        | u32::from(address.device()) << 11
        | u32::from(address.function()) << 8
        | u32::from(offset & 0xFC);
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _window = PCI_CONFIG.lock();
        io_write(0xCF8, select);
        Some(f(0xCFC + (offset & 3)))
    })
}

/// A PCI configuration read; all ones (as from an absent device) if unreachable.
fn pci_read<T: PortRead + Default + Not<Output = T>>(address: PciAddress, offset: u16) -> T {
    pci_config(address, offset, io_read).unwrap_or(!T::default())
}

/// A PCI configuration write; dropped if unreachable.
fn pci_write<T: PortWrite>(address: PciAddress, offset: u16, value: T) {
    pci_config(address, offset, |port| io_write(port, value));
}

impl acpi::Handler for PhysMapHandler {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let pa = PhysAddr::new_truncate(physical_address as u64);
        let reached = super::firmware_ptr(pa, size as u64);
        let ptr = reached
            .unwrap_or(NOTHING.as_ptr().cast())
            .cast_mut()
            .cast::<T>();
        let len = if reached.is_some() {
            size
        } else {
            size.min(core::mem::size_of_val(&NOTHING))
        };
        PhysicalMapping {
            physical_start: physical_address,
            virtual_start: NonNull::new(ptr).unwrap_or(NonNull::dangling()),
            region_length: len,
            mapped_length: len,
            handler: *self,
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}

    fn read_u8(&self, address: usize) -> u8 {
        mem_read(address)
    }
    fn read_u16(&self, address: usize) -> u16 {
        mem_read(address)
    }
    fn read_u32(&self, address: usize) -> u32 {
        mem_read(address)
    }
    fn read_u64(&self, address: usize) -> u64 {
        mem_read(address)
    }
    fn write_u8(&self, address: usize, value: u8) {
        mem_write(address, value)
    }
    fn write_u16(&self, address: usize, value: u16) {
        mem_write(address, value)
    }
    fn write_u32(&self, address: usize, value: u32) {
        mem_write(address, value)
    }
    fn write_u64(&self, address: usize, value: u64) {
        mem_write(address, value)
    }
    fn read_io_u8(&self, port: u16) -> u8 {
        io_read(port)
    }
    fn read_io_u16(&self, port: u16) -> u16 {
        io_read(port)
    }
    fn read_io_u32(&self, port: u16) -> u32 {
        io_read(port)
    }
    fn write_io_u8(&self, port: u16, value: u8) {
        io_write(port, value)
    }
    fn write_io_u16(&self, port: u16, value: u16) {
        io_write(port, value)
    }
    fn write_io_u32(&self, port: u16, value: u32) {
        io_write(port, value)
    }
    fn read_pci_u8(&self, address: PciAddress, offset: u16) -> u8 {
        pci_read(address, offset)
    }
    fn read_pci_u16(&self, address: PciAddress, offset: u16) -> u16 {
        pci_read(address, offset)
    }
    fn read_pci_u32(&self, address: PciAddress, offset: u16) -> u32 {
        pci_read(address, offset)
    }
    fn write_pci_u8(&self, address: PciAddress, offset: u16, value: u8) {
        pci_write(address, offset, value)
    }
    fn write_pci_u16(&self, address: PciAddress, offset: u16, value: u16) {
        pci_write(address, offset, value)
    }
    fn write_pci_u32(&self, address: PciAddress, offset: u16, value: u32) {
        pci_write(address, offset, value)
    }
    fn nanos_since_boot(&self) -> u64 {
        super::timer::now_ns()
    }
    fn stall(&self, microseconds: u64) {
        super::timer::delay_us(microseconds)
    }
    fn sleep(&self, milliseconds: u64) {
        super::timer::delay_us(milliseconds.saturating_mul(1000))
    }
}

/// Why the processors could not be read from ACPI.
#[derive(Clone, Debug)]
pub enum AcpiCpuError {
    /// The RSDP or the RSDT/XSDT is unusable.
    Tables(acpi::AcpiError),
    /// There is no MADT.
    NoMadt,
    /// The MADT lists no enabled processor.
    NoProcessors,
}

impl core::fmt::Display for AcpiCpuError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            AcpiCpuError::Tables(e) => write!(f, "the ACPI root tables are unusable: {e:?}"),
            AcpiCpuError::NoMadt => write!(f, "the ACPI tables have no MADT"),
            AcpiCpuError::NoProcessors => write!(f, "the MADT lists no enabled processor"),
        }
    }
}

/// The enabled processors of the MADT, by APIC ID, in table order, without duplicates
/// (firmware may list a CPU both as a local APIC and as a local x2APIC), at most
/// [`MAX_CPUS`]; decoded by [`fwparse::acpi`], which counts what it dropped.
pub type MadtCpus = fwparse::acpi::Cpus<MAX_CPUS>;

/// The ACPI tables through the RSDP at `rsdp`.
fn tables(rsdp: PhysAddr) -> Result<AcpiTables<PhysMapHandler>, acpi::AcpiError> {
    // SAFETY: `rsdp` is the RSDP address the firmware handed the bootloader; the crate
    // checks its signature before following it.
    unsafe { AcpiTables::from_rsdp(PhysMapHandler, rsdp.as_u64() as usize) }
}

/// The ACPI tables through the RSDP at `rsdp`, if there is one and they can be read.
pub(super) fn tables_at(rsdp: Option<u64>) -> Option<AcpiTables<PhysMapHandler>> {
    tables(PhysAddr::new_truncate(rsdp?)).ok()
}

/// A copy of the bytes of table `T` (its header's length of them), if there is one.
pub(super) fn table_bytes<T: AcpiTable>(tables: &AcpiTables<PhysMapHandler>) -> Option<Vec<u8>> {
    let table = tables.find_table::<T>()?;
    if let Err(e) = table.get().validate() {
        log::warn!(
            "{:?} fails validation ({e:?}); using it anyway",
            T::SIGNATURE
        );
    }
    let base = table.physical_start as u64;
    let len = u64::from(table.get().header().length);
    Some(
        (base..base.saturating_add(len))
            .map(|pa| super::read_firmware_byte(PhysAddr::new_truncate(pa)))
            .collect(),
    )
}

/// The MADT's bytes through the RSDP at `rsdp`.
fn madt_bytes(rsdp: PhysAddr) -> Result<Vec<u8>, AcpiCpuError> {
    let tables = tables(rsdp).map_err(AcpiCpuError::Tables)?;
    table_bytes::<Madt>(&tables).ok_or(AcpiCpuError::NoMadt)
}

/// The enabled processors listed in the MADT found through the RSDP at `rsdp`.
pub fn madt_cpus(rsdp: PhysAddr) -> Result<MadtCpus, AcpiCpuError> {
    let bytes = madt_bytes(rsdp)?;
    let cpus = fwparse::acpi::madt_cpus(bytes.get(MADT_ENTRIES_OFFSET..).unwrap_or(&[]));
    if cpus.malformed > 0 || cpus.duplicates > 0 {
        log::warn!(
            "MADT: {} malformed entries skipped, {} repeated APIC IDs ignored",
            cpus.malformed,
            cpus.duplicates
        );
    }
    if cpus.apic_ids().is_empty() {
        return Err(AcpiCpuError::NoProcessors);
    }
    Ok(cpus)
}

/// The physical addresses of the device registers the ACPI tables name: the local APIC
/// (MADT header or its 64-bit override), each I/O APIC (MADT), the HPET.
pub fn device_registers(rsdp: PhysAddr) -> Vec<(&'static str, u64)> {
    let mut out = Vec::new();
    if let Ok(bytes) = madt_bytes(rsdp) {
        let mut lapic = u64::from(u32::from_le_bytes(
            bytes
                .get(MADT_LAPIC_ADDRESS_OFFSET..MADT_LAPIC_ADDRESS_OFFSET + 4)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 4]),
        ));
        for entry in madt_entries(bytes.get(MADT_ENTRIES_OFFSET..).unwrap_or(&[])) {
            match entry {
                MadtEntry::IoApic { address, .. } => out.push(("I/O APIC", u64::from(address))),
                MadtEntry::LapicAddressOverride(address) => lapic = address,
                _ => {}
            }
        }
        out.push(("local APIC", lapic));
    }
    if let Ok(hpet) = tables(rsdp).and_then(|t| acpi::HpetInfo::new(&t)) {
        out.push(("HPET", hpet.base_address as u64));
    }
    out
}
