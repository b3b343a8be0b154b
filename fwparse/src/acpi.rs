//! Entries of the ACPI MADT and SRAT, decoded from the table's bytes (ACPI 6.5 sections
//! 5.2.12 and 5.2.16). Every entry starts with a type byte and a length byte; an entry
//! whose length runs past the table (or is below 2) ends the walk, one too short for its
//! type is reported as [`Malformed`](MadtEntry::Malformed) and skipped.

/// Bytes of the MADT before its first entry: SDT header, local APIC address, flags.
pub const MADT_ENTRIES_OFFSET: usize = 44;
/// Bytes of the SRAT before its first entry: SDT header and 12 reserved bytes.
pub const SRAT_ENTRIES_OFFSET: usize = 48;
/// Offset of the 32-bit local APIC address in the MADT.
pub const MADT_LAPIC_ADDRESS_OFFSET: usize = 36;

/// Flag bit 0 of processor and affinity structures: enabled.
const ENABLED: u32 = 1 << 0;
/// SRAT memory affinity flag bit 1: hot-pluggable.
const HOT_PLUGGABLE: u32 = 1 << 1;

fn le(bytes: &[u8], at: usize, n: usize) -> u64 {
    bytes
        .get(at..at + n)
        .map_or(0, |b| b.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x)))
}

/// The entries of a table: (type, bytes of the entry), stopping at the first entry
/// whose length is below 2 or runs past the end (`truncated` then says so).
struct Entries<'a> {
    bytes: &'a [u8],
    at: usize,
    truncated: bool,
}

impl<'a> Iterator for Entries<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.bytes.get(self.at..)?;
        if rest.is_empty() {
            return None;
        }
        let len = usize::from(*rest.get(1).unwrap_or(&0));
        if len < 2 || len > rest.len() {
            self.truncated = true;
            self.at = self.bytes.len();
            return None;
        }
        self.at += len;
        Some((rest[0], &rest[..len]))
    }
}

/// One MADT entry, as far as the kernel cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MadtEntry {
    /// A processor's local APIC (type 0) or local x2APIC (type 9).
    Processor {
        /// APIC ID.
        apic_id: u32,
        /// Usable now (flag bit 0).
        enabled: bool,
    },
    /// An I/O APIC (type 1).
    IoApic {
        /// Its ID.
        id: u8,
        /// Physical address of its registers.
        address: u32,
        /// First global system interrupt it serves.
        gsi_base: u32,
    },
    /// A 64-bit local APIC address (type 5) replacing the header's.
    LapicAddressOverride(u64),
    /// An entry too short for its type, at this byte offset of the entry list.
    Malformed {
        /// The entry's type.
        kind: u8,
        /// Its offset in the entry list.
        offset: usize,
    },
    /// Another type, not used here.
    Other(u8),
    /// The entry list ended with an entry whose length is below 2 or runs past the end.
    Truncated {
        /// Offset of that entry.
        offset: usize,
    },
}

/// The MADT entries in `entries` (the bytes after [`MADT_ENTRIES_OFFSET`]).
pub fn madt_entries(entries: &[u8]) -> impl Iterator<Item = MadtEntry> + '_ {
    decoded_entries(entries, |kind, offset, e| {
        let need = match kind {
            0 => 8,
            1 | 5 => 12,
            9 => 16,
            _ => 2,
        };
        if e.len() < need {
            return MadtEntry::Malformed { kind, offset };
        }
        match kind {
            0 => MadtEntry::Processor {
                apic_id: le(e, 3, 1) as u32,
                enabled: le(e, 4, 4) as u32 & ENABLED != 0,
            },
            9 => MadtEntry::Processor {
                apic_id: le(e, 4, 4) as u32,
                enabled: le(e, 8, 4) as u32 & ENABLED != 0,
            },
            1 => MadtEntry::IoApic {
                id: e[2],
                address: le(e, 4, 4) as u32,
                gsi_base: le(e, 8, 4) as u32,
            },
            5 => MadtEntry::LapicAddressOverride(le(e, 4, 8)),
            other => MadtEntry::Other(other),
        }
    })
    .map(|entry| entry.unwrap_or_else(|offset| MadtEntry::Truncated { offset }))
}

/// The entries of an ACPI entry list, each decoded by `decode(kind, offset, bytes)`;
/// a list that ends in a truncated entry yields `Err(offset)` for it, last.
fn decoded_entries<'a, T: 'a>(
    entries: &'a [u8],
    decode: impl Fn(u8, usize, &[u8]) -> T + 'a,
) -> impl Iterator<Item = Result<T, usize>> + 'a {
    let mut walk = Entries {
        bytes: entries,
        at: 0,
        truncated: false,
    };
    let mut done = false;
    core::iter::from_fn(move || {
        if done {
            return None;
        }
        let offset = walk.at;
        let Some((kind, e)) = walk.next() else {
            done = true;
            return walk.truncated.then_some(Err(offset));
        };
        Some(Ok(decode(kind, offset, e)))
    })
}

/// The enabled processors of a MADT: distinct APIC IDs in table order, at most `N`.
#[derive(Clone, Debug)]
pub struct Cpus<const N: usize> {
    apic_ids: [u32; N],
    len: usize,
    /// Enabled entries found once `N` processors were listed: never started (the table
    /// keeps no record of them, so one listed twice there counts twice).
    pub dropped: usize,
    /// Enabled entries repeating an APIC ID already listed (firmware may list a CPU as
    /// both local APIC and local x2APIC).
    pub duplicates: usize,
    /// Entries too short for their type, plus 1 if the list ended in a truncated entry.
    pub malformed: usize,
}

impl<const N: usize> Cpus<N> {
    /// The APIC IDs.
    pub fn apic_ids(&self) -> &[u32] {
        &self.apic_ids[..self.len]
    }
}

/// The enabled processors among `entries` (the bytes after [`MADT_ENTRIES_OFFSET`]).
pub fn madt_cpus<const N: usize>(entries: &[u8]) -> Cpus<N> {
    let mut cpus = Cpus {
        apic_ids: [0; N],
        len: 0,
        dropped: 0,
        duplicates: 0,
        malformed: 0,
    };
    for entry in madt_entries(entries) {
        match entry {
            MadtEntry::Processor {
                apic_id,
                enabled: true,
            } => {
                if cpus.apic_ids().contains(&apic_id) {
                    cpus.duplicates += 1;
                } else if let Some(slot) = cpus.apic_ids.get_mut(cpus.len) {
                    *slot = apic_id;
                    cpus.len += 1;
                } else {
                    cpus.dropped += 1;
                }
            }
            MadtEntry::Malformed { .. } | MadtEntry::Truncated { .. } => cpus.malformed += 1,
            _ => {}
        }
    }
    cpus
}

/// One SRAT entry, as far as the kernel cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SratEntry {
    /// An enabled processor (type 0 local APIC, type 2 local x2APIC affinity).
    Processor {
        /// Its (x2)APIC ID.
        apic_id: u32,
        /// Its proximity domain.
        domain: u32,
    },
    /// An enabled memory range (type 1) of non-zero length whose end fits in 64 bits.
    Memory {
        /// First byte.
        base: u64,
        /// Length in bytes.
        len: u64,
        /// Its proximity domain.
        domain: u32,
        /// Hot-pluggable (holds no memory at boot).
        hot_pluggable: bool,
    },
    /// Disabled, of another type, or a zero-length range: nothing to use.
    Ignored,
    /// A memory range whose end overflows 64 bits, or an entry too short for its type,
    /// at this offset of the entry list.
    Malformed {
        /// The entry's type.
        kind: u8,
        /// Its offset in the entry list.
        offset: usize,
    },
    /// The entry list ended with an entry whose length is below 2 or runs past the end.
    Truncated {
        /// Offset of that entry.
        offset: usize,
    },
}

/// The SRAT entries in `entries` (the bytes after [`SRAT_ENTRIES_OFFSET`]).
pub fn srat_entries(entries: &[u8]) -> impl Iterator<Item = SratEntry> + '_ {
    decoded_entries(entries, |kind, offset, e| {
        let need = match kind {
            0 => 16,
            1 => 40,
            2 => 24,
            _ => 2,
        };
        if e.len() < need {
            return SratEntry::Malformed { kind, offset };
        }
        let flags = |at| le(e, at, 4) as u32;
        match kind {
            0 if flags(4) & ENABLED != 0 => SratEntry::Processor {
                apic_id: le(e, 3, 1) as u32,
                domain: (le(e, 2, 1) | le(e, 9, 3) << 8) as u32,
            },
            2 if flags(12) & ENABLED != 0 => SratEntry::Processor {
                apic_id: le(e, 8, 4) as u32,
                domain: le(e, 4, 4) as u32,
            },
            1 if flags(28) & ENABLED != 0 && le(e, 16, 8) != 0 => {
                let (base, len) = (le(e, 8, 8), le(e, 16, 8));
                if base.checked_add(len).is_none() {
                    SratEntry::Malformed { kind, offset }
                } else {
                    SratEntry::Memory {
                        base,
                        len,
                        domain: le(e, 2, 4) as u32,
                        hot_pluggable: flags(28) & HOT_PLUGGABLE != 0,
                    }
                }
            }
            _ => SratEntry::Ignored,
        }
    })
    .map(|entry| entry.unwrap_or_else(|offset| SratEntry::Truncated { offset }))
}
