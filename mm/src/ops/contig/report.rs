//! What contiguity generation reports per VMA ([`ContigReport`], printed as one line
//! `CONTIG {json}` per phase), how one call is bounded ([`ContigOptions`]) and why it can
//! refuse ([`ContigError`]).

use crate::aspace::SpaceError;
use crate::frame::node::NodeId;
use crate::mapping::rmap::SpaceId;
use crate::ops::contig::stats::ChunkStats;
use alloc::format;
use alloc::string::String;
use core::fmt;

/// Where the anchor's window may lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    /// On the VMA's node: its `node` attribute, else the node holding most of its pages.
    VmaNode,
    /// On this node.
    Node(NodeId),
    /// Anywhere in memory.
    Anywhere,
}

/// The bounds of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContigOptions {
    /// Where windows may lie.
    pub placement: Placement,
    /// Pages (of any VMA) the call may move in all: a batch is cut to what is left,
    /// and the call stops, reporting what it did, when not one more block fits.
    pub max_pages: u64,
    /// Blocks per batch (one shootdown each).
    pub batch: usize,
    /// How many times a VMA may be re-anchored around pages that block the way.
    pub max_reanchors: usize,
}

impl Default for ContigOptions {
    fn default() -> Self {
        ContigOptions {
            placement: Placement::VmaNode,
            max_pages: u64::MAX,
            batch: 256,
            max_reanchors: 16,
        }
    }
}

/// The phase of a [`ContigReport`] line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// As the operation found the VMA.
    Before,
    /// As it left it.
    After,
}

/// What contiguity generation did to one VMA.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContigReport {
    /// The address space.
    pub space: SpaceId,
    /// First byte of the VMA.
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
    /// Contiguity when the operation began.
    pub before: ChunkStats,
    /// Contiguity when it ended.
    pub after: ChunkStats,
    /// Pinned or unmovable pages of the VMA.
    pub pinned: u64,
    /// Pages that were not where the chosen anchor puts them when the operation began.
    pub misplaced: u64,
    /// Pages of this VMA migrated into free target frames.
    pub migrated: u64,
    /// Pages of this VMA moved by exchanges (each way).
    pub exchanged: u64,
    /// Pages of other VMAs (or owners) moved out of this VMA's targets.
    pub displaced: u64,
    /// Blocks the frame source handed out during this VMA's exchanges (zero: an exchange
    /// allocates nothing; anything else running at the same time counts too).
    pub frames_allocated_by_exchange: u64,
    /// Anchor segments (one, plus two per pinned page off the line, plus re-anchors).
    pub segments: u64,
    /// Misplaced pages that could not be put in place (their target was blocked, or the
    /// block changed under the operation).
    pub failed: u64,
    /// Whether the operation finished (false: the work bound stopped it, or the VMA
    /// changed under it).
    pub complete: bool,
}

impl ContigReport {
    /// The report as one JSON object (the `CONTIG` line's payload), for `phase`; the
    /// field names are stable.
    pub fn json(&self, phase: Phase) -> String {
        let (name, s) = match phase {
            Phase::Before => ("before", &self.before),
            Phase::After => ("after", &self.after),
        };
        format!(
            "{{\"phase\":\"{name}\",\"space\":{},\"start\":{},\"end\":{},\"resident_pages\":{},\
             \"pinned\":{},\"chunks\":{},\"chunks_50\":{},\"chunks_90\":{},\"chunks_99\":{},\
             \"aligned_2m\":{},\"aligned_1g\":{},\"misplaced\":{},\"migrated\":{},\
             \"exchanged\":{},\"displaced\":{},\"frames_allocated_by_exchange\":{},\
             \"segments\":{},\"failed\":{},\"complete\":{}}}",
            self.space.0,
            self.start,
            self.end,
            s.resident_pages,
            self.pinned,
            s.chunks,
            s.chunks_50,
            s.chunks_90,
            s.chunks_99,
            s.aligned_2m,
            s.aligned_1g,
            self.misplaced,
            self.migrated,
            self.exchanged,
            self.displaced,
            self.frames_allocated_by_exchange,
            self.segments,
            self.failed,
            self.complete,
        )
    }

    /// Pages of this VMA moved, each move counted.
    pub fn moved(&self) -> u64 {
        self.migrated + self.exchanged
    }
}

/// Why contiguity generation refused a VMA (nothing was moved).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContigError {
    /// No VMA at the address.
    NotMapped,
    /// The placement names a node that does not exist.
    NoSuchNode,
    /// No window on the placement's memory can hold the VMA without overlapping
    /// another VMA's window, or the range tree is full.
    NoRoom,
    /// The VMA was unmapped, split or protected while its anchor was chosen.
    Changed,
    /// The address space refused (destroyed, foreign, bad address).
    Space(SpaceError),
}

impl fmt::Display for ContigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContigError::NotMapped => f.write_str("no VMA at the address"),
            ContigError::NoSuchNode => f.write_str("no such NUMA node"),
            ContigError::NoRoom => f.write_str("no room for the VMA's window"),
            ContigError::Changed => f.write_str("the VMA changed under the operation"),
            ContigError::Space(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for ContigError {}

impl From<SpaceError> for ContigError {
    fn from(e: SpaceError) -> Self {
        ContigError::Space(e)
    }
}
