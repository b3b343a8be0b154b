//! The loadable segments of the kernel's own ELF image, which the bootloader left in
//! memory: they tell which parts of the kernel are text (read+execute), read-only data,
//! and writable data, so that our page tables map them W^X.

use super::physmap;
use x86_64::PhysAddr;

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const PF_W: u32 = 2;

/// Access rights of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    /// Read + execute.
    Text,
    /// Read only, no execute.
    ReadOnly,
    /// Read + write, no execute.
    Data,
}

/// One PT_LOAD segment: virtual range and rights.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// First virtual byte.
    pub start: u64,
    /// One past the last virtual byte (memory size, including bss).
    pub end: u64,
    /// Rights.
    pub kind: SegmentKind,
}

/// Why the kernel image could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// The image does not start with the ELF magic.
    BadMagic,
    /// More loadable segments than we keep.
    TooManySegments,
    /// A header lies outside the image.
    Truncated,
}

/// Most segments a kernel image has (text, rodata, data, bss, and a few more).
pub const MAX_SEGMENTS: usize = 16;

fn read<const N: usize>(image: PhysAddr, len: u64, offset: u64) -> Result<[u8; N], ElfError> {
    if offset + N as u64 > len {
        return Err(ElfError::Truncated);
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = physmap::read_byte(image + offset + i as u64);
    }
    Ok(out)
}

fn u16_at(image: PhysAddr, len: u64, offset: u64) -> Result<u16, ElfError> {
    read::<2>(image, len, offset).map(u16::from_le_bytes)
}

fn u32_at(image: PhysAddr, len: u64, offset: u64) -> Result<u32, ElfError> {
    read::<4>(image, len, offset).map(u32::from_le_bytes)
}

fn u64_at(image: PhysAddr, len: u64, offset: u64) -> Result<u64, ElfError> {
    read::<8>(image, len, offset).map(u64::from_le_bytes)
}

/// The loadable segments of the ELF image at physical `image` of `len` bytes, with
/// `offset` added to their virtual addresses (the bootloader's load offset).
pub fn load_segments(
    image: PhysAddr,
    len: u64,
    offset: u64,
) -> Result<([Option<Segment>; MAX_SEGMENTS], usize), ElfError> {
    if read::<4>(image, len, 0)? != *b"\x7fELF" {
        return Err(ElfError::BadMagic);
    }
    let phoff = u64_at(image, len, 0x20)?;
    let phentsize = u64::from(u16_at(image, len, 0x36)?);
    let phnum = u64::from(u16_at(image, len, 0x38)?);
    let mut segments = [None; MAX_SEGMENTS];
    let mut n = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(image, len, ph)? != PT_LOAD {
            continue;
        }
        let flags = u32_at(image, len, ph + 4)?;
        let vaddr = u64_at(image, len, ph + 16)? + offset;
        let memsz = u64_at(image, len, ph + 40)?;
        if memsz == 0 {
            continue;
        }
        let kind = if flags & PF_X != 0 {
            SegmentKind::Text
        } else if flags & PF_W != 0 {
            SegmentKind::Data
        } else {
            SegmentKind::ReadOnly
        };
        let slot = segments.get_mut(n).ok_or(ElfError::TooManySegments)?;
        *slot = Some(Segment {
            start: vaddr,
            end: vaddr + memsz,
            kind,
        });
        n += 1;
    }
    Ok((segments, n))
}
