//! What the soak counts: operations done and refused per kind, the moves they made, the
//! time spent per size class, the audits, and the errors; printed as progress lines and
//! as the closing `SOAK {json}` line.
//!
//! A *move* is one block migrated (4 KiB, 2 MiB or 1 GiB) or one pair of blocks
//! exchanged: `moves` is the sum of the `migrate_*` and `exchange_*` counts. Promotions,
//! splits and collapses are counted per operation and are not moves (the 4 KiB pages a
//! collapse's set-up scatters are migrations, counted as such).

use crate::sprintln;
use alloc::format;
use alloc::string::String;

/// The kinds of operation counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Migrate4k,
    Migrate2m,
    Migrate1g,
    Exchange4k,
    Exchange2m,
    Exchange1g,
    Promote2m,
    Promote1g,
    Split2m,
    Split1g,
    Collapse2m,
    Collapse1g,
}

impl Kind {
    const ALL: [Kind; 12] = [
        Kind::Migrate4k,
        Kind::Migrate2m,
        Kind::Migrate1g,
        Kind::Exchange4k,
        Kind::Exchange2m,
        Kind::Exchange1g,
        Kind::Promote2m,
        Kind::Promote1g,
        Kind::Split2m,
        Kind::Split1g,
        Kind::Collapse2m,
        Kind::Collapse1g,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Migrate4k => "migrate_4k",
            Kind::Migrate2m => "migrate_2m",
            Kind::Migrate1g => "migrate_1g",
            Kind::Exchange4k => "exchange_4k",
            Kind::Exchange2m => "exchange_2m",
            Kind::Exchange1g => "exchange_1g",
            Kind::Promote2m => "promote_2m",
            Kind::Promote1g => "promote_1g",
            Kind::Split2m => "split_2m",
            Kind::Split1g => "split_1g",
            Kind::Collapse2m => "collapse_2m",
            Kind::Collapse1g => "collapse_1g",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The classes of operation the soak shares its time between (see
/// [`super::Schedule`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Batches of 4 KiB migrations and exchanges in the pool.
    Small,
    /// One operation on a 2 MiB range (or on the 4 KiB pages of a split one).
    Mid,
    /// A split, promotion or collapse at 1 GiB.
    GigaShape,
    /// A migration or exchange of the 1 GiB page.
    GigaMove,
}

impl Class {
    pub const ALL: [Class; 4] = [Class::Small, Class::Mid, Class::GigaShape, Class::GigaMove];

    fn name(self) -> &'static str {
        match self {
            Class::Small => "4k",
            Class::Mid => "2m",
            Class::GigaShape => "1g_shape",
            Class::GigaMove => "1g_move",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The soak's totals.
#[derive(Default)]
pub struct Counts {
    done: [u64; Kind::ALL.len()],
    refused: [u64; Kind::ALL.len()],
    /// Nanoseconds spent per class.
    pub spent_ns: [u64; Class::ALL.len()],
    /// Audits run, and the nanoseconds they took.
    pub audits: u64,
    pub audit_ns: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Counts {
    pub fn done(&mut self, kind: Kind, n: u64) {
        self.done[kind.index()] += n;
    }

    pub fn refused(&mut self, kind: Kind) {
        self.refused[kind.index()] += 1;
    }

    pub fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    /// Done of the kinds whose name starts with `prefix`.
    fn sum(&self, prefix: &str) -> u64 {
        Kind::ALL
            .iter()
            .filter(|k| k.name().starts_with(prefix))
            .map(|k| self.done[k.index()])
            .sum()
    }

    /// Blocks migrated plus pairs exchanged (see the module doc).
    pub fn moves(&self) -> u64 {
        self.sum("migrate") + self.sum("exchange")
    }

    pub fn progress(&self, seconds: u64) {
        sprintln!(
            "soak: {seconds} s: {} moves ({} migrations, {} exchanges), {} promotions, {} splits, {} collapses, {} audits, {} errors",
            self.moves(),
            self.sum("migrate"),
            self.sum("exchange"),
            self.sum("promote"),
            self.sum("split"),
            self.sum("collapse"),
            self.audits,
            self.errors
        );
    }

    /// The `SOAK` line's JSON; `writers` is (writers, their updates, their word errors).
    pub fn json(&self, writers: (usize, u64, u64), seconds: u64) -> String {
        let mut out = format!("{{\"seconds\":{seconds}");
        for k in Kind::ALL {
            let i = k.index();
            out.push_str(&format!(
                ",\"{}\":{},\"{}_refused\":{}",
                k.name(),
                self.done[i],
                k.name(),
                self.refused[i]
            ));
        }
        out.push_str(&format!(",\"moves\":{}", self.moves()));
        for c in Class::ALL {
            out.push_str(&format!(
                ",\"ms_{}\":{}",
                c.name(),
                self.spent_ns[c.index()] / 1_000_000
            ));
        }
        out.push_str(&format!(
            ",\"audits\":{},\"ms_audit\":{},\"writers\":{},\"writer_updates\":{},\"word_errors\":{},\"errors\":{}}}",
            self.audits,
            self.audit_ns / 1_000_000,
            writers.0,
            writers.1,
            writers.2,
            self.errors
        ));
        out
    }
}
