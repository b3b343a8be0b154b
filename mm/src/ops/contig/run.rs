//! Contiguity generation of one VMA, one address space or all of them (the protocol is
//! in the module doc of [`crate::ops::contig`]).

use crate::aspace::{AddressSpace, Mm, SpaceError};
use crate::backend::phys::PhysMem;
use crate::base::addr::{PageSize, Pfn, PAGE_SIZE};
use crate::frame::buddy::MigrateType;
use crate::frame::meta::FrameState;
use crate::frame::node::{NodeId, NodeRange};
use crate::mapping::anchor::{Anchor, AnchorSegment};
use crate::mapping::claims::ClaimId;
use crate::mapping::rmap::SpaceId;
use crate::mapping::vma::{check_user_addr, Vma};
use crate::ops::contig::anchor::{
    choose, choose_with, Choice, FrameClass, Need, PhysView, Unit, BLOCK,
};
use crate::ops::contig::report::{ContigError, ContigOptions, ContigReport, Placement};
use crate::ops::contig::stats::{chunk_stats, ChunkStats};
use crate::ops::contig::view::block_class;
use crate::ops::migrate::{Destination, MigrateError};
use alloc::sync::Arc;
use alloc::vec::Vec;

/// Pages in a 1 GiB block.
const G1_PAGES: u64 = 1 << 18;
/// Pages in a 2 MiB block.
const M2_PAGES: u64 = 512;
/// Passes over the remaining pages before the operation gives up on them.
const MAX_PASSES: usize = 64;
/// Tries per page whose move was refused by a transient cause.
const MAX_TRIES: u8 = 3;
/// Leaves a VMA's walk makes room for at once (64 Ki, 1.5 MiB of memory).
const LEAVES_RESERVED: u64 = 1 << 16;

/// One resident block of the VMA: where its head would be in the VMA's virtual pages.
#[derive(Clone, Copy, Debug)]
struct Resident {
    vpn: u64,
    head: Pfn,
    order: u8,
    pinned: bool,
    /// Already where another VMA's anchor puts it: a block both map (of a shared
    /// region), inside that VMA's claimed window (see [`Mm::mark_coplaced`]).
    coplaced: bool,
}

impl Resident {
    fn pages(&self) -> u64 {
        1 << self.order
    }

    /// Whether the block keeps its frames: pinned or unmovable, or in place for another
    /// VMA. It is a segment of its own (a run of such blocks in line, one segment).
    fn stays(&self) -> bool {
        self.pinned || self.coplaced
    }
}

/// What the frames a block belongs at hold now.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// All free.
    Free,
    /// Exactly one movable block of the same order, headed at the target.
    Exact(Pfn),
    /// Movable blocks of other sizes (heads and orders) that must move out first.
    Occupied(Vec<(Pfn, u8)>),
    /// Something that never moves (kernel, reserved, pinned, unmovable).
    Blocked,
}

/// A misplaced block still to be put in place.
#[derive(Clone, Copy, Debug)]
struct Work {
    head: Pfn,
    order: u8,
    target: Pfn,
    tries: u8,
}

/// Present leaves of a VMA: (vpn, pfn, pages), in address order.
type Leaves = Vec<(u64, u64, u64)>;

/// Physical ranges `[start, end)`.
type Ranges = Vec<(Pfn, Pfn)>;

/// The VMA as the operation found it.
struct Found {
    vma: Vma,
    leaves: Leaves,
    units: Vec<Resident>,
}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Make the VMA containing `va` physically contiguous (see the module doc), moving at
    /// most `opts.max_pages` pages.
    pub fn make_vma_contiguous(
        &self,
        space: &Arc<AddressSpace<'m, M>>,
        va: u64,
        opts: &ContigOptions,
    ) -> Result<ContigReport, ContigError> {
        let mut budget = opts.max_pages;
        self.contig_vma(space, va, opts, &mut budget)
    }

    /// Make every VMA of `space` contiguous, in address order, moving at most
    /// `opts.max_pages` pages in all; one result per VMA visited.
    pub fn make_space_contiguous(
        &self,
        space: &Arc<AddressSpace<'m, M>>,
        opts: &ContigOptions,
    ) -> Result<Vec<Result<ContigReport, ContigError>>, ContigError> {
        self.check_space(space)?;
        if space.is_destroyed() {
            return Err(SpaceError::SpaceDestroyed.into());
        }
        let mut budget = opts.max_pages;
        Ok(self.contig_space(space, opts, &mut budget))
    }

    /// Make every VMA of every address space contiguous, moving at most
    /// `opts.max_pages` pages in all; one result per VMA visited, with its space.
    pub fn make_all_contiguous(
        &self,
        opts: &ContigOptions,
    ) -> Vec<(SpaceId, Result<ContigReport, ContigError>)> {
        let mut budget = opts.max_pages;
        let mut visits: Vec<(Arc<AddressSpace<'m, M>>, Vma)> = Vec::new();
        for space in self.spaces() {
            for vma in space.vmas() {
                visits.push((space.clone(), vma));
            }
        }
        visits.sort_by_key(|(_, v)| !self.gigabyte_first(v.start, v.end));
        let mut out = Vec::new();
        for (space, vma) in visits {
            if budget == 0 {
                break;
            }
            out.push((
                space.id(),
                self.contig_vma(&space, vma.start, opts, &mut budget),
            ));
        }
        out
    }

    fn contig_space(
        &self,
        space: &Arc<AddressSpace<'m, M>>,
        opts: &ContigOptions,
        budget: &mut u64,
    ) -> Vec<Result<ContigReport, ContigError>> {
        let mut vmas = space.vmas();
        vmas.sort_by_key(|v| !self.gigabyte_first(v.start, v.end));
        let mut out = Vec::new();
        for vma in vmas {
            if *budget == 0 {
                break;
            }
            out.push(self.contig_vma(space, vma.start, opts, budget));
        }
        out
    }

    /// Whether the VMA `[start, end)` is made contiguous before the others by
    /// [`make_all_contiguous`](Self::make_all_contiguous) and
    /// [`make_space_contiguous`](Self::make_space_contiguous): it covers an aligned
    /// gigabyte and 1 GiB leaves are allowed, so it looks for a whole gigabyte without
    /// blocked frames (see [`Self::plan_segments`]), which smaller VMAs' windows taken
    /// before it could cut into.
    pub fn gigabyte_first(&self, start: u64, end: u64) -> bool {
        let g = G1_PAGES * PAGE_SIZE;
        self.max_leaf() == PageSize::Size1G && start.next_multiple_of(g) + g <= end
    }

    /// One VMA: find it, choose and claim its anchor, move its pages, report.
    fn contig_vma(
        &self,
        space: &Arc<AddressSpace<'m, M>>,
        va: u64,
        opts: &ContigOptions,
        budget: &mut u64,
    ) -> Result<ContigReport, ContigError> {
        self.check_space(space)?;
        check_user_addr(va).map_err(SpaceError::from)?;
        let mut found = self.find_resident(space, va)?;
        let (ranges, node) = self.placement_ranges(&found, opts.placement)?;
        let own = found
            .vma
            .anchor
            .as_ref()
            .map_or_else(|| self.new_claim_id(), |a| a.claim);
        self.mark_coplaced(space.id(), own, &mut found);
        let vma = &found.vma;
        // The VMA's old windows are given back first so that its new ones may reuse them.
        self.claims().release_owner(own);
        let segments = match self.plan_segments(&found, &ranges, own, opts) {
            Some(s) => s,
            None => {
                self.drop_anchor(space, vma);
                return Err(ContigError::NoRoom);
            }
        };
        let anchor = Anchor {
            claim: own,
            segments,
        };
        let fixed: Vec<(Pfn, Pfn)> = found
            .units
            .iter()
            .filter(|u| u.stays())
            .map(|u| (u.head, u.head.add(u.pages())))
            .collect();
        if let Err(e) = self.claim_windows(&anchor, vma, &fixed) {
            // Its old windows were given back above: the old anchor goes with them.
            self.drop_anchor(space, vma);
            return Err(e);
        }
        if !space
            .state
            .lock()
            .vmas
            .set_anchor(vma.start, vma.end, Some(anchor.clone()))
        {
            self.claims().release_owner(own);
            return Err(ContigError::Changed);
        }
        let mut report = ContigReport {
            space: space.id(),
            start: vma.start,
            end: vma.end,
            before: chunk_stats(&found.leaves),
            after: ChunkStats::default(),
            pinned: found
                .units
                .iter()
                .filter(|u| u.pinned)
                .map(|u| u.pages())
                .sum(),
            misplaced: 0,
            migrated: 0,
            exchanged: 0,
            displaced: 0,
            frames_allocated_by_exchange: 0,
            segments: anchor.segments.len() as u64,
            failed: 0,
            complete: true,
        };
        let mut todo = Vec::new();
        let first_vpn = vma.start / PAGE_SIZE;
        for u in found.units.iter().filter(|u| !u.stays()) {
            // Where the head belongs, from the block's first page inside the VMA (a
            // block cut by a split of the VMA may begin before it).
            let inside = u.vpn.max(first_vpn);
            let target = anchor
                .target(inside * PAGE_SIZE)
                .and_then(|t| t.0.checked_sub(inside - u.vpn))
                .map(Pfn);
            if target == Some(u.head) {
                continue;
            }
            report.misplaced += u.pages();
            match target.filter(|t| t.is_aligned(u.order)) {
                Some(target) => todo.push(Work {
                    head: u.head,
                    order: u.order,
                    target,
                    tries: 0,
                }),
                None => report.failed += u.pages(),
            }
        }
        self.place(space, vma, todo, node, opts, budget, &mut report);
        report.after = chunk_stats(
            &self
                .vma_leaves(space, vma.start)
                .map_or_else(|_| Vec::new(), |(_, leaves)| leaves),
        );
        Ok(report)
    }

    /// The VMA containing `va`, its present leaves and its resident blocks.
    fn find_resident(&self, space: &AddressSpace<'m, M>, va: u64) -> Result<Found, ContigError> {
        let (vma, leaves) = self.vma_leaves(space, va)?;
        let table = self.table;
        let mut units = Vec::with_capacity(leaves.len());
        for &(vpn, pfn, _) in &leaves {
            let Some(head) = table.head_of(Pfn(pfn)) else {
                continue;
            };
            let Some(meta) = table.get(head) else {
                continue;
            };
            if meta.state() != FrameState::Allocated {
                continue;
            }
            let Some(vpn) = vpn.checked_sub(pfn - head.0) else {
                continue;
            };
            units.push(Resident {
                vpn,
                head,
                order: meta.order(),
                pinned: block_class(meta) != FrameClass::Movable,
                coplaced: false,
            });
        }
        // One unit per block, as its first leaf in address order places it (the sorts
        // are stable). A single frame is mapped at one page of a VMA at most (a private
        // page by one entry, a shared region's page at its offset's), so when every
        // block is one frame the units are distinct already, and in order.
        if units.iter().any(|u| u.order > 0) {
            units.sort_by_key(|u| u.head);
            units.dedup_by_key(|u| u.head);
            units.sort_by_key(|u| u.vpn);
        }
        Ok(Found { vma, leaves, units })
    }

    /// Mark the blocks of `found` (of `space`) that another VMA's anchor already puts
    /// where they are: blocks both VMAs map (of a shared region), inside a window of
    /// that VMA's claim (not `own`), at the frame its line gives. Moving them would undo
    /// the other VMA's placement; they stay, and their frames stay in its window.
    fn mark_coplaced(&self, space: SpaceId, own: ClaimId, found: &mut Found) {
        // Only a shared region's frames are mapped by more than one VMA.
        if found.vma.flags.shared.is_none() {
            return;
        }
        let others: Vec<(Pfn, Pfn, ClaimId)> = self
            .claims()
            .ranges()
            .filter(|&(_, _, owner)| owner != own)
            .collect();
        if others.is_empty() {
            return;
        }
        let (start, end) = (found.vma.start, found.vma.end);
        for u in found.units.iter_mut().filter(|u| !u.pinned) {
            let Some(&(_, _, owner)) = others
                .iter()
                .find(|&&(a, b, _)| a <= u.head && u.head.add(u.pages()) <= b)
            else {
                continue;
            };
            let mappings = self.rmap.lock().entries(u.head);
            u.coplaced = mappings.iter().any(|e| {
                let va = e.va.as_u64();
                if e.space == space && (start..end).contains(&va) {
                    return false;
                }
                self.space(e.space).is_some_and(|other| {
                    let st = other.state.lock();
                    st.vmas
                        .find(va)
                        .and_then(|v| v.anchor.as_ref())
                        .is_some_and(|a| {
                            a.claim == owner && a.target(va) == Some(u.head.add(e.offset))
                        })
                })
            });
        }
    }

    /// The VMA containing `va` and its present leaves: (vpn, pfn, pages).
    fn vma_leaves(
        &self,
        space: &AddressSpace<'m, M>,
        va: u64,
    ) -> Result<(Vma, Leaves), ContigError> {
        let st = space.state.lock();
        if st.dead {
            return Err(SpaceError::SpaceDestroyed.into());
        }
        let vma = st.vmas.find(va).cloned().ok_or(ContigError::NotMapped)?;
        // Room for every page of a small VMA, so that collecting never reallocates; a
        // large one grows as it goes.
        let pages = (vma.end - vma.start) / PAGE_SIZE;
        let mut leaves = Vec::with_capacity(pages.min(LEAVES_RESERVED) as usize);
        leaves.extend(st.pt.walk(vma.start, vma.end).map(|(v, t)| {
            let pfn = Pfn::containing(t.leaf_base_pa).0;
            (v.as_u64() / PAGE_SIZE, pfn, t.size.bytes() / PAGE_SIZE)
        }));
        Ok((vma, leaves))
    }

    /// The physical ranges the VMA's windows may lie in, and the node displaced blocks
    /// go to (the placement's, if any).
    fn placement_ranges(
        &self,
        found: &Found,
        placement: Placement,
    ) -> Result<(Ranges, Option<NodeId>), ContigError> {
        let whole = alloc::vec![(Pfn(1), Pfn(self.table.len() as u64))];
        let node = match placement {
            Placement::Anywhere => return Ok((whole, None)),
            Placement::Node(n) if !self.frames.node_exists(n) => {
                return Err(ContigError::NoSuchNode)
            }
            Placement::Node(n) => Some(n),
            Placement::VmaNode => found.vma.flags.node.or_else(|| self.majority_node(found)),
        };
        let ranges = node.map_or_else(Vec::new, |n| self.frames.node_ranges(n));
        Ok((if ranges.is_empty() { whole } else { ranges }, node))
    }

    /// The node holding most of the VMA's resident pages.
    fn majority_node(&self, found: &Found) -> Option<NodeId> {
        // (node, pages): a machine has a few nodes, and a VMA's blocks come in runs on
        // one node, so the last node found is tried first, and a block inside the node
        // range of the one before it is counted without asking the frame source.
        let mut pages: Vec<(NodeId, u64)> = Vec::new();
        let mut last = None;
        let mut range: Option<NodeRange> = None;
        for u in &found.units {
            let inside = |r: &NodeRange| r.start <= u.head && u.head < r.end;
            if !range.as_ref().is_some_and(inside) {
                range = self.frames.node_range(u.head);
            }
            let Some(n) = range.map(|r| r.node) else {
                continue;
            };
            let i = match last.filter(|&i: &usize| pages[i].0 == n) {
                Some(i) => i,
                None => pages.iter().position(|&(m, _)| m == n).unwrap_or_else(|| {
                    pages.push((n, 0));
                    pages.len() - 1
                }),
            };
            pages[i].1 += u.pages();
            last = Some(i);
        }
        pages
            .into_iter()
            .max_by_key(|&(n, p)| (p, core::cmp::Reverse(n)))
            .map(|(n, _)| n)
    }

    /// Choose the anchor's segments: the VMA's pinned blocks stay where they are, each
    /// its own segment; the aligned gigabytes of a stretch between them get a clean
    /// window of their own when there is one ([`Self::gigabyte_window`]); every stretch
    /// (or end of one) left gets the cheapest window (or, when
    /// every window of the whole stretch puts resident pages on blocked frames, the span
    /// of its resident pages does, if that finds a cheaper one), and is cut and
    /// re-anchored past a page whose target is blocked (at most `opts.max_reanchors`
    /// times). `None` if some stretch with resident pages finds no window at all.
    fn plan_segments(
        &self,
        found: &Found,
        ranges: &[(Pfn, Pfn)],
        own: ClaimId,
        opts: &ContigOptions,
    ) -> Option<Vec<AnchorSegment>> {
        let (vs, ve) = (found.vma.start / PAGE_SIZE, found.vma.end / PAGE_SIZE);
        let mut segments: Vec<AnchorSegment> = Vec::new();
        let mut stretches = Vec::new();
        let mut at = vs;
        let mut last_coplaced = false;
        for u in found.units.iter().filter(|u| u.stays()) {
            let (a, b) = (u.vpn.max(vs), (u.vpn + u.pages()).min(ve));
            if a < at || a >= b {
                continue;
            }
            if a > at {
                stretches.push((at, a));
            }
            let pfn = u.head.add(a - u.vpn);
            match segments.last_mut() {
                // Coplaced blocks in line with the one before: one segment.
                Some(s)
                    if u.coplaced
                        && last_coplaced
                        && s.end == a * PAGE_SIZE
                        && s.pfn.add((s.end - s.start) / PAGE_SIZE) == pfn =>
                {
                    s.end = b * PAGE_SIZE;
                }
                _ => segments.push(AnchorSegment {
                    start: a * PAGE_SIZE,
                    end: b * PAGE_SIZE,
                    pfn,
                }),
            }
            last_coplaced = u.coplaced;
            at = b;
        }
        if at < ve {
            stretches.push((at, ve));
        }
        let mut chosen: Vec<(Pfn, Pfn)> = segments
            .iter()
            .map(|s: &AnchorSegment| (s.pfn, s.pfn.add((s.end - s.start) / PAGE_SIZE)))
            .collect();
        let mut reanchors = 0;
        let base: Vec<PhysView> = ranges
            .iter()
            .map(|&(lo, hi)| self.phys_view(lo, hi, Some(own)))
            .collect();
        // A stretch covering aligned gigabytes gets a window without blocked frames when
        // there is one, or else its gigabytes alone do; its ends are then anchored on
        // their own.
        let mut rest = Vec::new();
        for (a, b) in stretches {
            match self.gigabyte_window(&base, found, a, b) {
                Some((s, e, pfn)) => {
                    segments.push(AnchorSegment {
                        start: s * PAGE_SIZE,
                        end: e * PAGE_SIZE,
                        pfn,
                    });
                    chosen.push((pfn, pfn.add(e - s)));
                    rest.extend([(a, s), (e, b)].into_iter().filter(|(x, y)| x < y));
                }
                None => rest.push((a, b)),
            }
        }
        for (mut a, b) in rest {
            loop {
                let units = movable_units(found, a, b);
                let mut end = b;
                let mut window = self.stretch_window(&base, ranges, own, &chosen, &units, a, b);
                // When every window of the whole stretch puts resident pages on blocked
                // frames (memory cut by other windows into pieces shorter than the
                // stretch leaves only windows reaching into a hole), the resident pages'
                // span alone is anchored if it finds a cheaper window; the rest of the
                // stretch then has no segment.
                if let Some((cost, (s, e))) = window
                    .filter(|&(_, c)| c.cost >= BLOCK)
                    .map(|(_, c)| c.cost)
                    .zip(resident_span(&units, a, b))
                {
                    let span = self.stretch_window(&base, ranges, own, &chosen, &units, s, e);
                    if let Some(w) = span.filter(|(_, c)| c.cost < cost) {
                        (window, a, end) = (Some(w), s, e);
                    }
                }
                let Some((view, choice)) = window else {
                    if units.is_empty() {
                        break;
                    }
                    return None;
                };
                let view = &base[view];
                let blocked = units.iter().find(|u| {
                    let t = choice.pfn_start + (u.vpn - a);
                    t != u.pfn
                        && (t..t + u.pages).any(|f| view.class(Pfn(f)) == FrameClass::Blocked)
                });
                let cut = blocked
                    .map(|u| u.vpn)
                    .filter(|&v| v > a && reanchors < opts.max_reanchors);
                let seg_end = cut.unwrap_or(end);
                let seg = AnchorSegment {
                    start: a * PAGE_SIZE,
                    end: seg_end * PAGE_SIZE,
                    pfn: Pfn(choice.pfn_start),
                };
                chosen.push((seg.pfn, seg.pfn.add(seg_end - a)));
                segments.push(seg);
                match cut {
                    Some(v) => {
                        reanchors += 1;
                        a = v;
                    }
                    None => break,
                }
            }
        }
        segments.sort_by_key(|s| s.start);
        Some(segments)
    }

    /// For a stretch `[a, b)` covering aligned gigabytes `[g0, g1)`, when 1 GiB leaves are
    /// allowed: the part of it to anchor first and the cheapest window for it, congruent
    /// modulo 1 GiB, without a blocked frame anywhere in it (so that, once the pages are
    /// in place and the missing ones faulted in, the gigabytes can become 1 GiB leaves).
    /// The whole stretch if such a window holds it, else the gigabytes alone; `None` when
    /// the stretch covers no aligned gigabyte or neither has such a window.
    fn gigabyte_window(
        &self,
        base: &[PhysView],
        found: &Found,
        a: u64,
        b: u64,
    ) -> Option<(u64, u64, Pfn)> {
        let (g0, g1) = (a.next_multiple_of(G1_PAGES), b / G1_PAGES * G1_PAGES);
        if self.max_leaf() != PageSize::Size1G || g0 >= g1 {
            return None;
        }
        [(a, b), (g0, g1)].into_iter().find_map(|(s, e)| {
            let units = movable_units(found, s, e);
            base.iter()
                .filter_map(|v| choose_with(v, &units, s, e, G1_PAGES, Need::Clean))
                .min_by_key(|c| (c.cost, c.pfn_start))
                .map(|c| (s, e, Pfn(c.pfn_start)))
        })
    }

    /// The cheapest window for the stretch `[a, b)` with movable `units`, as the index of
    /// its range and the choice. The snapshot of memory is taken once per VMA (`base`,
    /// one view per range); only when the window found overlaps one `chosen` for this
    /// VMA already is it taken again with those excluded.
    #[allow(clippy::too_many_arguments)]
    fn stretch_window(
        &self,
        base: &[PhysView],
        ranges: &[(Pfn, Pfn)],
        own: ClaimId,
        chosen: &[(Pfn, Pfn)],
        units: &[Unit],
        a: u64,
        b: u64,
    ) -> Option<(usize, Choice)> {
        let found = best_window(base, units, a, b, self.max_leaf());
        let overlaps = |c: &Choice| {
            let (s, e) = (c.pfn_start, c.pfn_start + (b - a));
            chosen.iter().any(|&(x, y)| x.0 < e && s < y.0)
        };
        if !found.as_ref().is_some_and(|(_, c)| overlaps(c)) {
            return found;
        }
        let excluding: Vec<PhysView> = ranges
            .iter()
            .map(|&(lo, hi)| self.phys_view_with(lo, hi, Some(own), chosen))
            .collect();
        best_window(&excluding, units, a, b, self.max_leaf())
    }

    /// Claim every segment's window for `anchor`; on failure nothing stays claimed. A
    /// window inside one of the VMA's own blocks that never move (`fixed`: the frames of
    /// its pinned or unmovable blocks, each its own segment) is claimed only where no
    /// other VMA's window holds it already: its frames are taken for good by the block,
    /// so no page of the other VMA can be put there either way.
    fn claim_windows(
        &self,
        anchor: &Anchor,
        vma: &Vma,
        fixed: &[(Pfn, Pfn)],
    ) -> Result<(), ContigError> {
        let mut fixed = fixed.to_vec();
        fixed.sort_unstable();
        let mut claims = self.claims();
        for (first, end) in anchor.windows(vma.start, vma.end) {
            let stays = covered(&fixed, first, end);
            if claims.claim(first, end, anchor.claim).is_err() && !stays {
                claims.release_owner(anchor.claim);
                return Err(ContigError::NoRoom);
            }
        }
        Ok(())
    }

    /// Forget the anchor of `vma` (its windows were already given back).
    fn drop_anchor(&self, space: &AddressSpace<'m, M>, vma: &Vma) {
        if vma.anchor.is_some() {
            space.state.lock().vmas.set_anchor(vma.start, vma.end, None);
        }
    }

    /// What the frames of the block of `order` at `target` hold now (read without
    /// locks; the engine re-checks each block it claims).
    ///
    /// `free` is the free block `[start, end)` the last call found a target inside, if
    /// any: a target inside it is taken as free without a look (the targets of one pass
    /// come in order, many inside one big free block), and a target found inside a
    /// free block leaves that block there.
    fn target_state(&self, target: Pfn, order: u8, free: &mut Option<(Pfn, Pfn)>) -> Target {
        let table = self.table;
        let end = target.add(1 << order);
        if free.is_some_and(|(a, b)| a <= target && end <= b) {
            return Target::Free;
        }
        // The target one movable block of its own size (another VMA's page in the way
        // of an exchange): said without building the list below.
        if let Some(meta) = table.get(target) {
            if meta.state() == FrameState::Allocated
                && meta.order() == order
                && block_class(meta) == FrameClass::Movable
            {
                return Target::Exact(target);
            }
        }
        let mut blocks = Vec::new();
        let mut f = target;
        if let Some(h) = table.head_of(target).filter(|&h| h != target) {
            let Some(meta) = table.get(h) else {
                return Target::Blocked;
            };
            match (meta.state(), block_class(meta)) {
                (FrameState::Free, _) if h.add(1 << meta.order()) >= end => {
                    *free = Some((h, h.add(1 << meta.order())));
                    return Target::Free;
                }
                (FrameState::Allocated, FrameClass::Free) => {}
                (FrameState::Allocated, FrameClass::Movable) => blocks.push((h, meta.order())),
                _ => return Target::Blocked,
            }
            f = h.add(1 << meta.order());
        }
        while f < end {
            let Some(meta) = table.get(f) else {
                return Target::Blocked;
            };
            match (meta.state(), block_class(meta)) {
                (FrameState::Free, _) | (FrameState::Allocated, FrameClass::Free) => {}
                (FrameState::Allocated, FrameClass::Movable) => blocks.push((f, meta.order())),
                _ => return Target::Blocked,
            }
            f = f.add(1 << meta.order());
        }
        match blocks[..] {
            [] => Target::Free,
            [(h, o)] if h == target && o == order => Target::Exact(h),
            _ => Target::Occupied(blocks),
        }
    }

    /// Put each misplaced block at its target: migrated there when the target is free,
    /// exchanged with the block there when it is one block of the same size, or after
    /// moving out what is there otherwise; batched, in passes until nothing moves.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &self,
        space: &AddressSpace<'m, M>,
        vma: &Vma,
        mut todo: Vec<Work>,
        node: Option<NodeId>,
        opts: &ContigOptions,
        budget: &mut u64,
        report: &mut ContigReport,
    ) {
        // Largest first: a huge block put in place frees room for small ones.
        todo.sort_by_key(|w| (core::cmp::Reverse(w.order), w.target));
        let away = node.map_or(Destination::Any, Destination::Node);
        let batch = opts.batch.max(1);
        let mut cycle_break = false;
        for _ in 0..MAX_PASSES {
            if todo.is_empty() {
                break;
            }
            if !self.vma_unchanged(space, vma) {
                report.complete = false;
                break;
            }
            let mut ours = Ours::new(&todo);
            let mut migrations: Vec<usize> = Vec::new();
            let mut exchanges: Vec<(usize, Pfn)> = Vec::new();
            let mut displace: Vec<(Pfn, u8)> = Vec::new();
            let mut blocked = Vec::new();
            // Our blocks some unit of this pass already moves, by index in `todo`: a
            // block takes part in one move per pass (a second would only be refused as
            // already migrating). A block that is not ours is the target of one of ours
            // at most (targets are distinct), so it can meet only one exchange.
            let mut used = alloc::vec![false; todo.len()];
            let mut free = None;
            for (i, w) in todo.iter().enumerate() {
                match self.target_state(w.target, w.order, &mut free) {
                    Target::Free => {
                        used[i] = true;
                        migrations.push(i);
                    }
                    Target::Exact(h) if h == w.head => {}
                    Target::Exact(h) => {
                        let theirs = ours.at(h);
                        if (theirs.is_none() || cycle_break)
                            && !theirs.is_some_and(|k| used[k])
                            && !used[i]
                        {
                            if let Some(k) = theirs {
                                used[k] = true;
                            }
                            used[i] = true;
                            exchanges.push((i, h));
                        }
                    }
                    Target::Occupied(blocks) => {
                        if blocks.iter().all(|&(h, _)| ours.at(h).is_none()) {
                            displace.extend(blocks);
                        }
                    }
                    Target::Blocked => blocked.push(i),
                }
            }
            if migrations.is_empty() && exchanges.is_empty() && displace.is_empty() {
                if blocked.len() == todo.len() || cycle_break {
                    break;
                }
                // Only blocks waiting for each other are left: break the cycles with
                // exchanges.
                cycle_break = true;
                continue;
            }
            cycle_break = false;
            let mut done = alloc::vec![false; todo.len()];
            // Moving what sits in the way first, then migrations, then exchanges.
            displace.sort_unstable();
            displace.dedup();
            let mut rest = &displace[..];
            while !rest.is_empty() {
                let n = fitting(rest, batch, *budget, |&(_, o)| 1u64 << o);
                if n == 0 {
                    report.complete = false;
                    return;
                }
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let requests = self.destinations_outside_windows(chunk, away);
                for (r, &(_, o)) in self.migrate_batch(&requests).iter().zip(chunk) {
                    if r.is_ok() {
                        report.displaced += 1 << o;
                        *budget -= 1 << o;
                    }
                }
            }
            let mut rest = &migrations[..];
            while !rest.is_empty() {
                let n = fitting(rest, batch, *budget, |&i| 1u64 << todo[i].order);
                if n == 0 {
                    report.complete = false;
                    return;
                }
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let requests: Vec<(Pfn, Destination)> = chunk
                    .iter()
                    .map(|&i| (todo[i].head, Destination::Frame(todo[i].target)))
                    .collect();
                for (r, &i) in self.migrate_batch(&requests).iter().zip(chunk) {
                    let pages = 1u64 << todo[i].order;
                    match r {
                        Ok(_) => {
                            report.migrated += pages;
                            *budget -= pages;
                            done[i] = true;
                        }
                        Err(e) => todo[i].tries += tries_for(*e),
                    }
                }
            }
            let mut rest = &exchanges[..];
            while !rest.is_empty() {
                let n = fitting(rest, batch, *budget, |&(i, _)| 2u64 << todo[i].order);
                if n == 0 {
                    report.complete = false;
                    return;
                }
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let pairs: Vec<(Pfn, Pfn)> =
                    chunk.iter().map(|&(i, h)| (todo[i].head, h)).collect();
                let before = self.frames.allocations();
                let results = self.exchange_batch(&pairs);
                report.frames_allocated_by_exchange += self.frames.allocations() - before;
                for (r, &(i, occupant)) in results.iter().zip(chunk) {
                    let pages = 1u64 << todo[i].order;
                    match r {
                        Ok(()) => {
                            report.exchanged += pages;
                            *budget -= 2 * pages;
                            done[i] = true;
                            // The occupant now sits where our block was; if it is one of
                            // ours, it is still to be placed from there (no other move
                            // of this pass changed its head: it was used once).
                            let old = todo[i].head;
                            if let Some(k) = ours.at(occupant) {
                                todo[k].head = old;
                                report.exchanged += pages;
                            } else {
                                report.displaced += pages;
                            }
                        }
                        Err(e) => todo[i].tries += tries_for(*e),
                    }
                }
            }
            for &i in &blocked {
                todo[i].tries = MAX_TRIES;
            }
            // A block an exchange of its partner swapped into place is done too.
            for (k, w) in todo.iter().enumerate() {
                if w.head == w.target {
                    done[k] = true;
                }
            }
            let mut k = 0;
            todo.retain(|w| {
                let keep = !done[k] && w.tries < MAX_TRIES;
                if !done[k] && w.tries >= MAX_TRIES {
                    report.failed += 1 << w.order;
                }
                k += 1;
                keep
            });
        }
        report.failed += todo.iter().map(|w| 1u64 << w.order).sum::<u64>();
    }

    /// Where to move blocks that are in the way: free blocks outside every claimed window
    /// (a block taken from the allocator inside one is held until all are chosen, then
    /// given back), so that a displaced block never lands on another target; `away`
    /// when the allocator has nothing else.
    fn destinations_outside_windows(
        &self,
        blocks: &[(Pfn, u8)],
        away: Destination,
    ) -> Vec<(Pfn, Destination)> {
        let windows: Vec<(Pfn, Pfn)> = self.claims().ranges().map(|(a, b, _)| (a, b)).collect();
        let inside = |p: Pfn, o: u8| {
            let end = p.add(1 << o);
            windows.iter().any(|&(a, b)| p < b && a < end)
        };
        let node = match away {
            Destination::Node(n) => Some(n),
            _ => None,
        };
        let mut held = Vec::new();
        let mut chosen = Vec::new();
        let mut out = Vec::with_capacity(blocks.len());
        for &(h, o) in blocks {
            let mut dst = away;
            for _ in 0..64 {
                match self.frames.alloc(o, MigrateType::Movable, node) {
                    Ok(p) if inside(p, o) => held.push((p, o)),
                    Ok(p) => {
                        chosen.push((p, o));
                        dst = Destination::Frame(p);
                        break;
                    }
                    Err(_) => break,
                }
            }
            out.push((h, dst));
        }
        for (p, o) in held.into_iter().chain(chosen) {
            self.free_block(p, o);
        }
        out
    }

    /// Whether the VMA is still exactly as the operation found it.
    fn vma_unchanged(&self, space: &AddressSpace<'m, M>, vma: &Vma) -> bool {
        let st = space.state.lock();
        !st.dead
            && st
                .vmas
                .find(vma.start)
                .is_some_and(|v| v.start == vma.start && v.end == vma.end)
    }
}

/// Our blocks' heads (distinct) with their index in `todo`, as they were when a pass
/// began. Sorted at the first look-up: a pass whose targets are all free, the common
/// case in memory with room, never looks one up.
struct Ours {
    heads: Vec<(Pfn, usize)>,
    sorted: bool,
}

impl Ours {
    fn new(todo: &[Work]) -> Ours {
        Ours {
            heads: todo.iter().enumerate().map(|(i, w)| (w.head, i)).collect(),
            sorted: false,
        }
    }

    /// The index in `todo` of our block headed at `h`, if it is one.
    fn at(&mut self, h: Pfn) -> Option<usize> {
        if !self.sorted {
            self.heads.sort_unstable();
            self.sorted = true;
        }
        let k = self.heads.binary_search_by_key(&h, |&(p, _)| p).ok()?;
        Some(self.heads[k].1)
    }
}

/// How much a refused move counts against a block's tries: nothing for a transient
/// cause (another move holds the block, or it changed and is looked at again next pass).
fn tries_for(e: MigrateError) -> u8 {
    match e {
        MigrateError::AlreadyMigrating | MigrateError::Changed => 0,
        _ => 1,
    }
}

/// The cheapest window for the stretch `[a, b)` over every view (the view's index and the
/// choice), congruent modulo 1 GiB when the stretch spans an aligned gigabyte and 1 GiB
/// leaves are allowed (unless only a 2 MiB-congruent window avoids blocked frames), else
/// modulo 2 MiB.
fn best_window(
    views: &[PhysView],
    units: &[Unit],
    a: u64,
    b: u64,
    max_leaf: PageSize,
) -> Option<(usize, Choice)> {
    let spans_1g = max_leaf == PageSize::Size1G && a.next_multiple_of(G1_PAGES) + G1_PAGES <= b;
    let best = |align: u64| {
        views
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i, choose(v, units, a, b, align)?)))
            .min_by_key(|(_, c)| (c.cost, c.pfn_start))
    };
    let coarse = spans_1g.then(|| best(G1_PAGES)).flatten();
    match coarse {
        Some((v, c)) if c.cost < BLOCK => Some((v, c)),
        _ => {
            let fine = best(M2_PAGES);
            match (coarse, fine) {
                (Some(c), Some(f)) => Some(if c.1.cost <= f.1.cost { c } else { f }),
                (c, f) => f.or(c),
            }
        }
    }
}

/// Whether the ranges `fixed` (sorted) cover all of `[first, end)`.
fn covered(fixed: &[(Pfn, Pfn)], first: Pfn, end: Pfn) -> bool {
    let mut at = first;
    for &(a, b) in fixed {
        if a > at {
            break;
        }
        at = at.max(b);
        if at >= end {
            return true;
        }
    }
    at >= end
}

/// Each movable block's part inside the stretch `[a, b)` (a block only partly mapped,
/// or cut by a VMA split, may reach past it).
fn movable_units(found: &Found, a: u64, b: u64) -> Vec<Unit> {
    found
        .units
        .iter()
        .filter(|u| !u.stays())
        .filter_map(|u| {
            let (from, to) = (u.vpn.max(a), (u.vpn + u.pages()).min(b));
            (from < to).then(|| Unit {
                vpn: from,
                pfn: u.head.0 + (from - u.vpn),
                pages: to - from,
                pinned: false,
            })
        })
        .collect()
}

/// The 2 MiB-aligned virtual pages around the `units` (sorted by vpn) inside the stretch
/// `[a, b)`, if any.
fn resident_span(units: &[Unit], a: u64, b: u64) -> Option<(u64, u64)> {
    let first = units.first()?.vpn;
    let last = units.last().map(|u| u.vpn + u.pages)?;
    Some((
        (first / M2_PAGES * M2_PAGES).max(a),
        last.next_multiple_of(M2_PAGES).min(b),
    ))
}

/// How many of the first `batch` of `items` fit in `budget` pages together (`pages` of
/// each): a batch is cut to what the call's bound leaves, so a small bound still moves
/// blocks one at a time rather than stopping before a batch that would pass it.
fn fitting<T>(items: &[T], batch: usize, budget: u64, pages: impl Fn(&T) -> u64) -> usize {
    let mut sum = 0u64;
    items
        .iter()
        .take(batch)
        .take_while(|item| {
            sum = sum.saturating_add(pages(item));
            sum <= budget
        })
        .count()
}

#[cfg(test)]
mod tests;
