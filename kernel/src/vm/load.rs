//! Writers of user memory, for the huge-page tests and the soak: each owns a set of words
//! in user memory and keeps giving them new values, each word's value a hash of the
//! writer, the generation and the word. Every pass first checks that each word still
//! holds what the writer last wrote (a write lost by a promotion, split, collapse,
//! migration or exchange in between shows there), then writes the next generation and
//! reads it back. Words are reached through the fault probes ([`probe`]), so a fault the
//! address space cannot resolve is counted, not fatal.
//!
//! Words of writer `k` lie at `page + j * 512 + k * 8` (`j` below [`WORDS_PER_PAGE`]) of
//! the pages it is given, so several writers share a page without sharing a word.

use super::{activate, deactivate, Space};
use crate::arch::probe;
use crate::arch::timer::Deadline;
use crate::smp;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

/// Words of a writer in each of its pages, 512 bytes apart.
pub const WORDS_PER_PAGE: u64 = 8;

/// One writer (see the module doc).
pub struct Writer {
    /// The address space it writes through.
    pub space: Arc<Space>,
    id: u64,
    words: Vec<u64>,
    /// The generation its words hold (0: none written yet, the words read zero).
    generation: u64,
    /// Passes that wrote a new generation.
    pub updates: u64,
    /// Words found wrong or writes that faulted.
    pub errors: u64,
    /// The first of them.
    pub first_error: Option<String>,
}

impl Writer {
    /// Writer `k` (1 to 63) of the words in `pages`, through `space`.
    pub fn new(space: Arc<Space>, k: u64, pages: &[u64]) -> Writer {
        let words = pages
            .iter()
            .flat_map(|&p| (0..WORDS_PER_PAGE).map(move |j| p + j * 512 + k * 8))
            .collect();
        Writer {
            space,
            id: k,
            words,
            generation: 0,
            updates: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn expected(&self, i: usize) -> u64 {
        if self.generation == 0 {
            0
        } else {
            let mut x = self.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ self.generation.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
                ^ (i as u64).wrapping_mul(0x1656_67B1_9E37_79F9);
            x ^= x >> 31;
            x | 1
        }
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    /// Check every word against the last generation; with `update`, write the next one
    /// and read it back.
    pub fn pass(&mut self, update: bool) {
        for i in 0..self.words.len() {
            let (va, want) = (self.words[i], self.expected(i));
            let got = probe::read_u64(va);
            if got != Some(want) {
                self.error(format!(
                    "writer {} {va:#x} (generation {}): {got:x?}, expected {want:#x}",
                    self.id, self.generation
                ));
            }
        }
        if !update {
            return;
        }
        self.generation += 1;
        for i in 0..self.words.len() {
            let (va, v) = (self.words[i], self.expected(i));
            // SAFETY: the writer's words are its own, in user memory of `space`, loaded
            // on this CPU (or the write faults, and is counted).
            if !unsafe { probe::write_u64(va, v) } {
                self.error(format!("writer {} {va:#x}: write faulted", self.id));
            } else if probe::read_u64(va) != Some(v) {
                self.error(format!(
                    "writer {} {va:#x}: write did not read back",
                    self.id
                ));
            }
        }
        self.updates += 1;
    }

    /// Passes until `stop`, with its address space loaded on the running CPU.
    pub fn run(self, stop: &AtomicBool) -> Writer {
        self.run_paced(stop, 0)
    }

    /// [`run`](Self::run), sleeping `pause_ms` after each pass (halted until a timer
    /// tick or an IPI, serving work queued for the CPU): under emulation, a guest CPU
    /// that halts leaves its host thread to the others.
    pub fn run_paced(mut self, stop: &AtomicBool, pause_ms: u64) -> Writer {
        if let Err(e) = activate(&self.space) {
            self.error(format!("activate: {e}"));
            return self;
        }
        while !stop.load(Ordering::Acquire) {
            self.pass(true);
            if pause_ms > 0 {
                smp::sleep_serving(Deadline::after_ms(pause_ms), || {
                    stop.load(Ordering::Acquire)
                });
            }
        }
        deactivate();
        self
    }

    /// The last check after the run: every word holds the last generation.
    pub fn verify(&mut self) {
        if activate(&self.space).is_ok() {
            self.pass(false);
        } else {
            self.error("activate for the last check failed".into());
        }
        deactivate();
    }
}

/// Totals of several writers: updates, errors, the first error.
pub fn totals(writers: &[Writer]) -> (u64, u64, Option<String>) {
    (
        writers.iter().map(|w| w.updates).sum(),
        writers.iter().map(|w| w.errors).sum(),
        writers.iter().find_map(|w| w.first_error.clone()),
    )
}
