//! Exchange of two in-use blocks of one size (4 KiB, 2 MiB or 1 GiB), in the same or in
//! different address spaces, each possibly mapped in several places or held by a shared
//! region: afterwards every mapping (and holder) of one sees its own data at the other's
//! frames. No frame is allocated: the contents are swapped a word of each frame at a
//! time through registers, or through a small buffer on the stack ([`SwapBuffer`]).
//!
//! An exchange is a unit of the move engine ([`crate::ops::engine`], whose module doc
//! gives the protocol) that claims both blocks: both carry migration entries while they
//! swap, so a CPU touching either waits and then sees its data at the new frame; a batch
//! of pairs ([`Mm::exchange_batch`]) shoots down once. The engine moves every mapping,
//! reverse-map entry, map count, reference and holder of each block to the other, so the
//! counts, owners and per-node usage follow the data. A pair that cannot be exchanged
//! (pinned, unmovable, free, kernel, changing, sizes differ, a block with itself, a
//! block already claimed by another pair) fails with a typed [`MigrateError`] and both
//! of its blocks are exactly as they were.

#[cfg(test)]
mod tests;

use crate::aspace::vmstat::Event;
use crate::aspace::Mm;
use crate::backend::phys::{PhysMem, SWAP_CHUNK_MAX};
use crate::base::addr::Pfn;
use crate::frame::buddy::AllocError;
use crate::ops::engine::{ClaimDrops, Claimed, Move};
use crate::ops::error::MigrateError;
use alloc::vec::Vec;

/// How the swap moves the bytes: through a stack buffer of some size, or through
/// registers. The RFC this project grew from swapped one word at a time; its reviewers
/// asked for a page-sized buffer. The benchmark (`vm.exchange.buffer.*`) measures all
/// four. [`SwapBuffer::Registers`] is the default: it copies each byte once where a
/// buffer copies it three times (to the buffer, over, back), and in QEMU it measured
/// 1.4 times as fast as the page buffer at 4 KiB and 2.2 times at 2 MiB. The word
/// buffer is the slowest: each word goes through three separate 8-byte copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SwapBuffer {
    /// One 8-byte word at a time.
    Word,
    /// One 64-byte cache line at a time.
    Line,
    /// One 4 KiB frame at a time.
    Page,
    /// No memory buffer: a word of each frame at a time through registers, so each
    /// byte is copied once rather than three times.
    Registers,
}

impl SwapBuffer {
    /// The buffer's size in 8-byte words (none for [`SwapBuffer::Registers`]).
    pub fn words(self) -> usize {
        match self {
            SwapBuffer::Registers => 0,
            SwapBuffer::Word => 1,
            SwapBuffer::Line => 8,
            SwapBuffer::Page => SWAP_CHUNK_MAX / 8,
        }
    }
}

/// One exchange on the move engine: claim both blocks, swap their frames, point each
/// one's mappings and holder at the other.
pub(crate) struct Exchange {
    blocks: [Pfn; 2],
    buffer: SwapBuffer,
}

impl Exchange {
    /// The exchange of `a` and `b` through `buffer`.
    pub(crate) fn new(a: Pfn, b: Pfn, buffer: SwapBuffer) -> Exchange {
        Exchange {
            blocks: [a, b],
            buffer,
        }
    }
}

impl<'m, M: PhysMem> Move<'m, M> for Exchange {
    type Output = ();

    fn blocks(&self) -> &[Pfn] {
        &self.blocks
    }

    fn check(&self, _mm: &Mm<'m, M>, orders: &[u8]) -> Result<(), MigrateError> {
        if orders[0] == orders[1] {
            Ok(())
        } else {
            Err(MigrateError::SizeMismatch)
        }
    }

    fn prepare(
        &mut self,
        _mm: &Mm<'m, M>,
        claimed: &[Claimed],
        _at: Option<Result<Pfn, AllocError>>,
    ) -> Result<(), MigrateError> {
        // The claim re-read both orders under the lock against what `check` saw.
        if claimed[0].order == claimed[1].order {
            Ok(())
        } else {
            Err(MigrateError::SizeMismatch)
        }
    }

    fn abandon(&mut self, _drops: &mut ClaimDrops<'_, 'm, M>, _claimed: &[Claimed]) {}

    fn transform(&mut self, mm: &Mm<'m, M>, claimed: &[Claimed]) {
        let (a, b) = (claimed[0].head, claimed[1].head);
        let frames = 0..1u64 << claimed[0].order;
        if self.buffer == SwapBuffer::Registers {
            for i in frames {
                mm.mem
                    .swap_frame_in_registers(a.add(i).addr(), b.add(i).addr());
            }
            return;
        }
        let mut buf = [0u64; SWAP_CHUNK_MAX / 8];
        let buf = &mut buf[..self.buffer.words()];
        for i in frames {
            mm.mem.swap_frame(a.add(i).addr(), b.add(i).addr(), buf);
        }
    }

    fn target(&self, i: usize) -> Pfn {
        self.blocks[1 - i]
    }

    fn finish(
        self,
        claimed: &[Claimed],
        drops: &mut ClaimDrops<'_, 'm, M>,
    ) -> Result<(), MigrateError> {
        drops.count(Event::PagesExchanged, 2 << claimed[0].order);
        let mut released = false;
        for c in claimed {
            released |= drops.drop_claim(c.head, c.order);
        }
        if released {
            Err(MigrateError::Released)
        } else {
            Ok(())
        }
    }
}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Exchange the blocks headed at `a` and `b` (see the module doc).
    pub fn exchange(&self, a: Pfn, b: Pfn) -> Result<(), MigrateError> {
        self.exchange_batch(&[(a, b)])
            .pop()
            .unwrap_or(Err(MigrateError::NotInUse))
    }

    /// Exchange each pair, with one shootdown for the whole batch; one result per pair,
    /// in order. A pair that fails leaves both its blocks exactly as they were (except
    /// [`MigrateError::Released`]: a block lost its last user meanwhile and was freed);
    /// the others are exchanged.
    pub fn exchange_batch(&self, pairs: &[(Pfn, Pfn)]) -> Vec<Result<(), MigrateError>> {
        self.exchange_batch_with(pairs, SwapBuffer::Registers)
    }

    /// [`exchange_batch`](Self::exchange_batch) with the given way of swapping (for the
    /// benchmark that chooses it).
    pub fn exchange_batch_with(
        &self,
        pairs: &[(Pfn, Pfn)],
        buffer: SwapBuffer,
    ) -> Vec<Result<(), MigrateError>> {
        let units = pairs
            .iter()
            .map(|&(a, b)| Exchange::new(a, b, buffer))
            .collect();
        self.complete_moves(self.begin_moves(units))
    }
}
