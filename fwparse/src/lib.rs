//! Parsers of firmware data that the kernel must survive whatever the firmware wrote:
//! the memory map ([`memmap`]), the entries of the ACPI MADT and SRAT ([`acpi`]), and
//! whether the machine is QEMU ([`platform`]).
//!
//! Everything here works on plain values and byte slices, allocates nothing and never
//! panics, so it is host-tested with property tests over corrupted input; the kernel
//! only copies the firmware's bytes in and acts on what comes out.
#![no_std]
#![deny(unsafe_code)]

pub mod acpi;
pub mod memmap;
pub mod platform;
