//! Building the scenario from its [`Plan`]: the address spaces, the shared region, every
//! VMA, the interleaved faults with the unmovable kernel allocations among them, the
//! holes in the background, the pinned pages and the tags of the data check; and
//! tearing it all down again.

use super::data;
use super::plan::{Background, Kind, Plan, Stream, BACKGROUND_BASE, BACKGROUND_VMA_BLOCKS};
use super::plan::{G1, K4, M2, SPACES};
use super::ScenarioError;
use crate::mem::frames;
use crate::vm::physmap::Label;
use crate::vm::{deactivate, KernelMm, Space};
use alloc::collections::BTreeSet;
use alloc::sync::Arc;
use alloc::vec::Vec;
use mm::base::addr::Pfn;
use mm::frame::buddy::MigrateType;
use mm::mapping::region::SharedRegion;
use mm::mapping::vma::{HugePolicy, SharedBacking, VmaFlags};

/// The letter of the background in the picture.
pub const BACKGROUND_LETTER: char = 'Z';

/// The scenario as built: everything it allocated, until [`Built::teardown`].
pub struct Built {
    /// The memory manager.
    pub mm: &'static KernelMm,
    /// The layout.
    pub plan: Plan,
    /// The demo VMAs' address spaces, by index.
    pub spaces: Vec<Arc<Space>>,
    /// The background's address space.
    pub background: Arc<Space>,
    /// The region `E` and `F` share.
    region: Option<Arc<SharedRegion>>,
    /// Unmovable kernel allocations made during the faults (order 0).
    kernel: Vec<Pfn>,
    /// Heads of the pinned blocks.
    pins: Vec<Pfn>,
    /// Background blocks unmapped again.
    holes: BTreeSet<u64>,
}

fn private(huge: HugePolicy) -> VmaFlags {
    VmaFlags::private(huge, true)
}

impl Built {
    /// Create the spaces and map every VMA (no frames yet).
    fn new(mm: &'static KernelMm, plan: Plan) -> Result<Built, ScenarioError> {
        let mut spaces = Vec::new();
        for _ in 0..SPACES {
            spaces.push(mm.new_space().map_err(ScenarioError::Space)?);
        }
        let background = mm.new_space().map_err(ScenarioError::Space)?;
        let mut built = Built {
            mm,
            plan,
            spaces,
            background,
            region: None,
            kernel: Vec::new(),
            pins: Vec::new(),
            holes: BTreeSet::new(),
        };
        built.map_all()?;
        Ok(built)
    }

    fn map_all(&mut self) -> Result<(), ScenarioError> {
        for v in self.plan.vmas.clone() {
            let flags = match v.kind {
                // Huge only on request: faults map 4 KiB pages (see `fault_all`), and
                // the collapse at the end may make them huge.
                Kind::Small => private(HugePolicy::OnRequest),
                Kind::Huge => private(HugePolicy::Always),
                Kind::SharedFirst | Kind::SharedSecond => {
                    let region = match &self.region {
                        Some(r) => r.clone(),
                        None => {
                            let r = SharedRegion::new(v.len).map_err(ScenarioError::Region)?;
                            self.region = Some(r.clone());
                            r
                        }
                    };
                    VmaFlags {
                        shared: Some(SharedBacking { region, offset: 0 }),
                        ..private(HugePolicy::Never)
                    }
                }
            };
            self.mm
                .map_anon(&self.spaces[v.space], v.start, v.len, flags)
                .map_err(|error| ScenarioError::Map {
                    letter: v.letter,
                    error,
                })?;
        }
        for i in 0..self.plan.background.vmas() {
            self.mm
                .map_anon(
                    &self.background,
                    BACKGROUND_BASE + i * G1,
                    BACKGROUND_VMA_BLOCKS * M2,
                    private(HugePolicy::Always),
                )
                .map_err(|error| ScenarioError::Map {
                    letter: BACKGROUND_LETTER,
                    error,
                })?;
        }
        Ok(())
    }

    fn populate(
        &self,
        letter: char,
        space: &Space,
        va: u64,
        len: u64,
    ) -> Result<(), ScenarioError> {
        self.mm
            .populate(space, va, len)
            .map_err(|error| ScenarioError::Populate { letter, va, error })
    }

    /// Fault `[va, va + len)` of a huge-on-request VMA in 4 KiB at a time, as a program
    /// touching it would (a populate would request huge pages).
    fn fault_small(
        &self,
        letter: char,
        space: &Space,
        va: u64,
        len: u64,
    ) -> Result<(), ScenarioError> {
        for page in (va..va + len).step_by(4096) {
            self.mm
                .handle_fault(space, page, true)
                .map_err(|e| ScenarioError::Populate {
                    letter,
                    va: page,
                    error: e.into(),
                })?;
        }
        Ok(())
    }

    /// Every fault of the schedule, then the second mapping of the shared region.
    fn fault_all(&mut self) -> Result<(), ScenarioError> {
        let steps: Vec<(Stream, u64)> = self.plan.schedule().collect();
        for (stream, i) in steps {
            match stream {
                Stream::Vma(k) => {
                    let v = self.plan.vmas[k];
                    if v.kind == Kind::Small {
                        self.fault_small(
                            v.letter,
                            &self.spaces[v.space],
                            v.unit_va(i),
                            v.unit_bytes(),
                        )?;
                    } else {
                        self.populate(
                            v.letter,
                            &self.spaces[v.space],
                            v.unit_va(i),
                            v.unit_bytes(),
                        )?;
                    }
                }
                Stream::Background => self.populate(
                    BACKGROUND_LETTER,
                    &self.background,
                    Background::block_va(i),
                    M2,
                )?,
                Stream::Kernel => self.kernel.push(
                    frames::alloc(0, MigrateType::Unmovable).map_err(ScenarioError::KernelAlloc)?,
                ),
            }
        }
        for v in self
            .plan
            .vmas
            .iter()
            .filter(|v| v.kind == Kind::SharedSecond)
        {
            self.populate(v.letter, &self.spaces[v.space], v.start, v.len)?;
        }
        Ok(())
    }

    /// Unmap the seed's choice of background blocks: scattered free 2 MiB holes.
    fn punch_holes(&mut self, rng: &mut super::plan::Rng) -> Result<(), ScenarioError> {
        let blocks = self.plan.background.blocks;
        while (self.holes.len() as u64) < self.plan.background.holes.min(blocks) {
            self.holes.insert(rng.range(0, blocks - 1));
        }
        for &i in &self.holes {
            self.mm
                .unmap(&self.background, Background::block_va(i), M2)
                .map_err(|error| ScenarioError::Map {
                    letter: BACKGROUND_LETTER,
                    error,
                })?;
        }
        Ok(())
    }

    /// Unmap `blocks` more background blocks, a seeded choice among those still mapped
    /// (the machine's other tenant giving memory back); returns how many were unmapped.
    pub fn shrink_background(&mut self, blocks: u64) -> u64 {
        let mut rng = super::plan::Rng::new(self.plan.seed ^ 0x5b1e);
        let live: Vec<u64> = (0..self.plan.background.blocks)
            .filter(|&i| self.block_live(i))
            .collect();
        let mut done = 0;
        let mut picked = BTreeSet::new();
        while picked.len() < live.len() && done < blocks {
            let i = live[rng.range(0, live.len() as u64 - 1) as usize];
            if !picked.insert(i) {
                continue;
            }
            if self
                .mm
                .unmap(&self.background, Background::block_va(i), M2)
                .is_ok()
            {
                self.holes.insert(i);
                done += 1;
            }
        }
        done
    }

    /// Free the unmovable kernel allocations made during the faults (the machine's
    /// short-lived kernel work done); returns how many.
    pub fn free_kernel_allocations(&mut self) -> Result<usize, ScenarioError> {
        let kernel = core::mem::take(&mut self.kernel);
        let n = kernel.len();
        for pfn in kernel {
            frames::free(pfn.addr(), 0).map_err(ScenarioError::KernelAlloc)?;
        }
        Ok(n)
    }

    /// Pin the plan's pages of the pinned VMA for the long term (as a device's buffer
    /// is): each is moved to where unmovable allocations go, then pinned.
    fn pin_all(&mut self) -> Result<(), ScenarioError> {
        let v = self.plan.vmas[self.plan.pinned_vma];
        for &page in &self.plan.pinned.clone() {
            let va = v.start + page * K4;
            let head = self
                .mm
                .pin_longterm(&self.spaces[v.space], va)
                .map_err(|error| ScenarioError::Pin {
                    letter: v.letter,
                    va,
                    error,
                })?;
            self.pins.push(head);
        }
        Ok(())
    }

    /// Tag every resident page (demo VMAs) and block (background).
    fn tag_all(&self) -> Result<(), ScenarioError> {
        let seed = self.plan.seed;
        for v in self
            .plan
            .vmas
            .iter()
            .filter(|v| v.kind != Kind::SharedSecond)
        {
            data::write_vma(seed, &self.spaces[v.space], v).map_err(|va| {
                ScenarioError::NotMapped {
                    letter: v.letter,
                    va,
                }
            })?;
        }
        for i in (0..self.plan.background.blocks).filter(|i| !self.holes.contains(i)) {
            data::write_block(seed, &self.background, i).map_err(|va| {
                ScenarioError::NotMapped {
                    letter: BACKGROUND_LETTER,
                    va,
                }
            })?;
        }
        Ok(())
    }

    /// Whether background block `i` is still mapped.
    fn block_live(&self, i: u64) -> bool {
        !self.holes.contains(&i)
    }

    /// The picture's labels: one letter per demo VMA, then the background.
    pub fn labels(&self) -> Vec<Label<'_>> {
        let mut labels: Vec<Label<'_>> = self
            .plan
            .vmas
            .iter()
            .map(|v| (v.letter, &*self.spaces[v.space], v.start, v.end()))
            .collect();
        let end = BACKGROUND_BASE + self.plan.background.vmas() * G1;
        labels.push((BACKGROUND_LETTER, &*self.background, BACKGROUND_BASE, end));
        labels
    }

    /// The demo VMAs' data as they read back now.
    pub fn verify(&self) -> data::Damage {
        data::verify(&self.plan, &self.spaces, &self.background, |i| {
            self.block_live(i)
        })
    }

    /// Damage one page of the first VMA (the demonstration's self-test).
    pub fn damage(&self) -> bool {
        let v = &self.plan.vmas[0];
        data::damage(self.plan.seed, &self.spaces[v.space], v)
    }

    /// Undo everything: unpin, destroy the spaces, release the region, free the kernel
    /// allocations. Every step runs; the first error is returned.
    pub fn teardown(mut self) -> Result<(), ScenarioError> {
        self.release()
    }

    fn release(&mut self) -> Result<(), ScenarioError> {
        deactivate();
        let mut first: Result<(), ScenarioError> = Ok(());
        let mut keep = |r: Result<(), ScenarioError>| {
            if first.is_ok() {
                first = r;
            }
        };
        for head in core::mem::take(&mut self.pins) {
            keep(
                self.mm
                    .unpin(head)
                    .map_err(|error| ScenarioError::Unpin { head, error }),
            );
        }
        let spaces = core::mem::take(&mut self.spaces);
        for space in spaces.iter().chain(core::iter::once(&self.background)) {
            if !space.is_destroyed() {
                keep(self.mm.destroy_space(space).map_err(ScenarioError::Space));
            }
        }
        drop(spaces);
        if let Some(region) = self.region.take() {
            keep(
                self.mm
                    .release_region(&region)
                    .map(|_| ())
                    .map_err(ScenarioError::Space),
            );
        }
        for pfn in core::mem::take(&mut self.kernel) {
            keep(frames::free(pfn.addr(), 0).map_err(ScenarioError::KernelAlloc));
        }
        first
    }
}

impl Drop for Built {
    fn drop(&mut self) {
        // A scenario that failed half-way still gives everything back.
        let _ = self.release();
    }
}

/// Build the scenario of `plan`: map, fault interleaved, punch the holes, pin, tag.
pub fn build(mm: &'static KernelMm, plan: Plan) -> Result<Built, ScenarioError> {
    let mut rng = super::plan::Rng::new(plan.seed ^ 0x401e5);
    let mut built = Built::new(mm, plan)?;
    built.fault_all()?;
    built.punch_holes(&mut rng)?;
    built.pin_all()?;
    built.tag_all()?;
    Ok(built)
}
