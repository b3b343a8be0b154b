//! The ACPI SRAT (System Resource Affinity Table): which memory ranges and which
//! processors belong to which proximity domain (NUMA node).
//!
//! The `acpi` crate finds and validates the table, but its entry iterator reads the
//! one-byte entry length as two bytes (and its `MemoryAffinity::length` takes the high
//! half of the length from the base address), so the entries are decoded here from the
//! table's bytes, as ACPI 6.5 section 5.2.16 lays them out: a header of type (1 byte) and
//! length (1 byte), then
//!
//! - type 0, processor local APIC affinity (16 bytes): proximity domain bits 0-7 at 2,
//!   APIC ID at 3, flags (bit 0: enabled) at 4, proximity domain bits 8-31 at 9;
//! - type 1, memory affinity (40 bytes): proximity domain at 2, base at 8, length at 16,
//!   flags (bit 0: enabled, bit 1: hot-pluggable) at 28;
//! - type 2, processor local x2APIC affinity (24 bytes): proximity domain at 4, x2APIC
//!   ID at 8, flags at 12.
//!
//! Disabled entries are skipped; hot-pluggable ranges are kept apart (nothing is plugged
//! there at boot); entries of other types are ignored, a truncated one ends the walk.

use super::acpi::PhysMapHandler;
use crate::mem::physmap;
use acpi::sdt::srat::Srat;
use acpi::{AcpiTable, AcpiTables};
use alloc::vec::Vec;
use x86_64::PhysAddr;

/// Bytes before the first entry: the SDT header and 12 reserved bytes.
const ENTRIES_OFFSET: u64 = 48;
/// Flag bit 0 of every affinity structure: the entry is enabled.
const ENABLED: u32 = 1 << 0;
/// Memory affinity flag bit 1: the range is hot-pluggable.
const HOT_PLUGGABLE: u32 = 1 << 1;

/// A physical memory range of one proximity domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryAffinity {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// The proximity domain.
    pub domain: u32,
    /// The range may be hot-plugged (it holds no memory at boot).
    pub hot_pluggable: bool,
}

/// A processor of one proximity domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessorAffinity {
    /// Its local (x2)APIC ID.
    pub apic_id: u32,
    /// The proximity domain.
    pub domain: u32,
}

/// The enabled entries of the SRAT.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    /// Memory ranges, in table order.
    pub memory: Vec<MemoryAffinity>,
    /// Processors, in table order.
    pub processors: Vec<ProcessorAffinity>,
}

/// Why the SRAT could not be read.
#[derive(Clone, Debug)]
pub enum SratError {
    /// The RSDP or the RSDT/XSDT is unusable.
    Tables(acpi::AcpiError),
    /// The firmware has no SRAT (a machine without NUMA information).
    NoSrat,
}

impl core::fmt::Display for SratError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            SratError::Tables(e) => write!(f, "the ACPI root tables are unusable: {e:?}"),
            SratError::NoSrat => write!(f, "the ACPI tables have no SRAT"),
        }
    }
}

/// A little-endian value of `N` bytes at physical address `pa`.
fn read_le<const N: usize>(pa: u64) -> u64 {
    (0..N as u64).fold(0, |v, i| {
        v | u64::from(physmap::read_byte(PhysAddr::new(pa + i))) << (8 * i)
    })
}

/// The enabled memory and processor affinities of the SRAT found through the RSDP at
/// `rsdp`.
pub fn affinity(rsdp: PhysAddr) -> Result<Affinity, SratError> {
    // SAFETY: `rsdp` is the RSDP address the firmware handed the bootloader; the crate
    // checks its signature before following it.
    let tables = unsafe { AcpiTables::from_rsdp(PhysMapHandler, rsdp.as_u64() as usize) }
        .map_err(SratError::Tables)?;
    let srat = tables.find_table::<Srat>().ok_or(SratError::NoSrat)?;
    if let Err(e) = srat.get().validate() {
        log::warn!("SRAT fails validation ({e:?}); using it anyway");
    }
    let base = srat.physical_start as u64;
    let end = base + u64::from(srat.get().header().length);
    let mut out = Affinity::default();
    let mut at = base + ENTRIES_OFFSET;
    while at + 2 <= end {
        let (kind, len) = (read_le::<1>(at), read_le::<1>(at + 1));
        if len < 2 || at + len > end {
            log::warn!("SRAT entry of type {kind} at {at:#x} is truncated; ignoring the rest");
            break;
        }
        let flags = |offset| read_le::<4>(at + offset) as u32;
        match (kind, len) {
            (0, 16..) if flags(4) & ENABLED != 0 => out.processors.push(ProcessorAffinity {
                apic_id: read_le::<1>(at + 3) as u32,
                domain: (read_le::<1>(at + 2) | read_le::<3>(at + 9) << 8) as u32,
            }),
            (1, 40..) if flags(28) & ENABLED != 0 => {
                let len = read_le::<8>(at + 16);
                if len > 0 {
                    out.memory.push(MemoryAffinity {
                        base: read_le::<8>(at + 8),
                        len,
                        domain: read_le::<4>(at + 2) as u32,
                        hot_pluggable: flags(28) & HOT_PLUGGABLE != 0,
                    });
                }
            }
            (2, 24..) if flags(12) & ENABLED != 0 => out.processors.push(ProcessorAffinity {
                apic_id: read_le::<4>(at + 8) as u32,
                domain: read_le::<4>(at + 4) as u32,
            }),
            _ => {}
        }
        at += len;
    }
    Ok(out)
}
