//! ACPI tables through the `acpi` crate, read through the linear physical map: which
//! processors the MADT lists.
//!
//! The crate is built without its AML interpreter; of [`acpi::Handler`] it then only
//! maps tables. The register, port and PCI accessors it also requires are implemented
//! plainly (physical memory through the linear map, port I/O, PCI configuration
//! mechanism #1) so that the handler stays correct if the interpreter is turned on.

use crate::mem::physmap;
use crate::percpu::MAX_CPUS;
use acpi::sdt::madt::{Madt, MadtEntry};
use acpi::{AcpiTable, AcpiTables, PciAddress, PhysicalMapping};
use core::ops::Not;
use core::ptr::NonNull;
use spin::Mutex;
use x86_64::instructions::port::{Port, PortRead, PortWrite};
use x86_64::PhysAddr;

/// MADT processor flag: the processor is usable.
const PROCESSOR_ENABLED: u32 = 1;

/// Gives the `acpi` crate access to physical memory through the linear map.
#[derive(Clone, Copy, Debug)]
pub struct PhysMapHandler;

fn phys_ptr<T>(address: usize) -> *mut T {
    physmap::virt(PhysAddr::new_truncate(address as u64)).as_mut_ptr()
}

fn mem_read<T>(address: usize) -> T {
    // SAFETY: the crate only names registers the firmware's tables describe; the linear
    // map covers all physical memory and device space below its end.
    unsafe { phys_ptr::<T>(address).read_volatile() }
}

fn mem_write<T>(address: usize, value: T) {
    // SAFETY: as in `mem_read`; writing a firmware-described register is what the
    // firmware's tables ask for.
    unsafe { phys_ptr::<T>(address).write_volatile(value) }
}

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
        let virtual_start = NonNull::new(phys_ptr::<T>(physical_address))
            .expect("the linear map starts far above address 0");
        PhysicalMapping {
            physical_start: physical_address,
            virtual_start,
            region_length: size,
            mapped_length: size,
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
/// (firmware may list a CPU both as a local APIC and as a local x2APIC).
pub struct MadtCpus {
    apic_ids: [u32; MAX_CPUS],
    len: usize,
    /// Enabled processors listed past [`MAX_CPUS`]: never started.
    pub dropped: usize,
}

impl MadtCpus {
    /// The APIC IDs.
    pub fn apic_ids(&self) -> &[u32] {
        &self.apic_ids[..self.len]
    }

    fn push(&mut self, apic_id: u32) {
        if self.apic_ids().contains(&apic_id) {
            return;
        }
        match self.apic_ids.get_mut(self.len) {
            Some(slot) => {
                *slot = apic_id;
                self.len += 1;
            }
            None => self.dropped += 1,
        }
    }
}

/// The enabled processors listed in the MADT found through the RSDP at `rsdp`.
pub fn madt_cpus(rsdp: PhysAddr) -> Result<MadtCpus, AcpiCpuError> {
    // SAFETY: `rsdp` is the RSDP address the firmware handed the bootloader; the crate
    // checks its signature before following it.
    let tables = unsafe { AcpiTables::from_rsdp(PhysMapHandler, rsdp.as_u64() as usize) }
        .map_err(AcpiCpuError::Tables)?;
    let madt = tables.find_table::<Madt>().ok_or(AcpiCpuError::NoMadt)?;
    if let Err(e) = madt.get().validate() {
        log::warn!("MADT fails validation ({e:?}); using it anyway");
    }
    let mut cpus = MadtCpus {
        apic_ids: [0; MAX_CPUS],
        len: 0,
        dropped: 0,
    };
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(e) if e.flags & PROCESSOR_ENABLED != 0 => {
                cpus.push(u32::from(e.apic_id))
            }
            MadtEntry::LocalX2Apic(e) if e.flags & PROCESSOR_ENABLED != 0 => cpus.push(e.x2apic_id),
            _ => {}
        }
    }
    if cpus.len == 0 {
        return Err(AcpiCpuError::NoProcessors);
    }
    Ok(cpus)
}
