//! Contiguity generation: making each VMA's pages physically contiguous after they were
//! allocated, so that huge mappings can cover them.
//!
//! # Protocol (one VMA)
//!
//! 1. **Look**: under the space's lock, the VMA and its present leaves; every resident
//!    block (4 KiB, 2 MiB or 1 GiB, whole even when only part of it is mapped) with the
//!    virtual page its head corresponds to.
//! 2. **Choose the anchor** ([`anchor::choose`]): candidate physical windows on the
//!    placement's memory (the VMA's NUMA node unless told otherwise), congruent with the
//!    VMA modulo 2 MiB, and modulo 1 GiB where the VMA spans an aligned gigabyte, are
//!    scored by the pages already in place, the free, movable and blocked frames their
//!    pages would land on, and no window may overlap another VMA's ([`view`] snapshots
//!    the frames, the range tree [`crate::mapping::claims`] the windows). The cheapest
//!    wins. The VMA's own pinned or unmovable blocks stay where they are, each its own
//!    segment of the anchor, and so do blocks of a shared region that another VMA
//!    mapping it already put at its target (in that VMA's window, where its line puts
//!    them; a run of them in line is one segment, whose frames stay in the other
//!    window, unclaimed by this VMA), so a region mapped twice is not moved again for
//!    its second mapping. Each stretch between them is anchored on its own; a
//!    stretch whose chosen window would put a page on a blocked frame is cut there and
//!    the rest re-anchored, a bounded number of times. So a VMA with `k` pinned pages
//!    off the line ends in at most `2k + 1` chunks. A stretch all of whose windows put
//!    resident pages on blocked frames (memory cut into pieces shorter than it) anchors
//!    only the 2 MiB-aligned span of its resident pages, when that finds a cheaper
//!    window. Where 1 GiB leaves are allowed, a stretch covering aligned gigabytes
//!    first looks for a window congruent modulo 1 GiB that holds no blocked frame at all
//!    ([`anchor::choose_with`] with [`anchor::Need::Clean`]: the frames the missing
//!    pages will be faulted into count too, or the gigabyte can never be one leaf), for
//!    the whole stretch, else for its gigabytes alone, whose two ends are then anchored
//!    as stretches of their own; without such a window
//!    the stretch is anchored whole as above. For the same reason the operations on
//!    several VMAs visit the VMAs covering an aligned gigabyte first
//!    ([`Mm::gigabyte_first`](crate::aspace::Mm::gigabyte_first)), before smaller VMAs'
//!    windows cut into the clean gigabytes.
//! 3. **Claim** the windows in the range tree and store the anchor in the VMA (refused
//!    with [`ContigError::Changed`] if the VMA was unmapped or split meanwhile). From then
//!    on a page faulted into the VMA is allocated at its target frame when that is free,
//!    and unmapping a piece gives its share of the windows back.
//! 4. **Place** every misplaced block, in batches (one shootdown each, through the move
//!    engine): migrated into its target when the target is free; exchanged
//!    ([`crate::ops::exchange`]) with the block there when that is one movable block of
//!    the same size (another VMA's, or one of this VMA's own misplaced blocks, which then
//!    continues from the frame it was swapped to); otherwise what is there is migrated
//!    away first. Largest blocks first; passes repeat until nothing moves, and blocks
//!    that only wait on each other are exchanged to break the cycle.
//! 5. **Report** ([`ContigReport`]): contiguity before and after, and what moved.
//!
//! The work of one call is bounded ([`ContigOptions::max_pages`]): a batch is cut to the
//! blocks the bound still leaves room for; the operation stops when not one more block
//! fits and says so (`complete: false`), and a later call continues from the stored
//! anchor.

pub mod anchor;
pub mod report;
mod run;
pub mod stats;
mod view;

pub use report::{ContigError, ContigOptions, ContigReport, Phase, Placement};
