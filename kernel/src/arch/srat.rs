//! The ACPI SRAT (System Resource Affinity Table): which memory ranges and which
//! processors belong to which proximity domain (NUMA node).
//!
//! The `acpi` crate finds and validates the table, but its entry iterator reads the
//! one-byte entry length as two bytes (and its `MemoryAffinity::length` takes the high
//! half of the length from the base address), so the entries are decoded by
//! `fwparse::acpi` from a copy of the table's bytes, as ACPI 6.5 section 5.2.16 lays
//! them out: a header of type (1 byte) and length (1 byte), then
//!
//! - type 0, processor local APIC affinity (16 bytes): proximity domain bits 0-7 at 2,
//!   APIC ID at 3, flags (bit 0: enabled) at 4, proximity domain bits 8-31 at 9;
//! - type 1, memory affinity (40 bytes): proximity domain at 2, base at 8, length at 16,
//!   flags (bit 0: enabled, bit 1: hot-pluggable) at 28;
//! - type 2, processor local x2APIC affinity (24 bytes): proximity domain at 4, x2APIC
//!   ID at 8, flags at 12.
//!
//! Disabled entries are skipped; hot-pluggable ranges are kept apart (nothing is plugged
//! there at boot); entries of other types are ignored, one too short for its type or a
//! range whose end overflows is skipped with a warning, a truncated one ends the walk.

use super::acpi::PhysMapHandler;
use acpi::sdt::srat::Srat;
use acpi::AcpiTables;
use alloc::vec::Vec;
use fwparse::acpi::{srat_entries, SratEntry, SRAT_ENTRIES_OFFSET};
use x86_64::PhysAddr;

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

/// The enabled memory and processor affinities of the SRAT found through the RSDP at
/// `rsdp`.
pub fn affinity(rsdp: PhysAddr) -> Result<Affinity, SratError> {
    // SAFETY: `rsdp` is the RSDP address the firmware handed the bootloader; the crate
    // checks its signature before following it.
    let tables = unsafe { AcpiTables::from_rsdp(PhysMapHandler, rsdp.as_u64() as usize) }
        .map_err(SratError::Tables)?;
    let bytes = super::acpi::table_bytes::<Srat>(&tables).ok_or(SratError::NoSrat)?;
    let mut out = Affinity::default();
    for entry in srat_entries(bytes.get(SRAT_ENTRIES_OFFSET..).unwrap_or(&[])) {
        match entry {
            SratEntry::Processor { apic_id, domain } => {
                out.processors.push(ProcessorAffinity { apic_id, domain })
            }
            SratEntry::Memory {
                base,
                len,
                domain,
                hot_pluggable,
            } => out.memory.push(MemoryAffinity {
                base,
                len,
                domain,
                hot_pluggable,
            }),
            SratEntry::Ignored => {}
            SratEntry::Malformed { kind, offset } => {
                log::warn!("SRAT entry of type {kind} at offset {offset} is malformed; skipped")
            }
            SratEntry::Truncated { offset } => {
                log::warn!("SRAT entry at offset {offset} is truncated; ignoring the rest")
            }
        }
    }
    Ok(out)
}
