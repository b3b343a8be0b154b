//! Host tests of the move engine (exchange and migration have their own): the claim under
//! the lock, remap failures that must not leave migration entries behind, and one
//! shootdown per batch whatever the number of address spaces.

use super::*;
use crate::aspace::testing::{read_user, with_env, write_user, Env, Event};
use crate::backend::phys::Arena;
use crate::mapping::vma::{HugePolicy, VmaFlags};
use crate::ops::exchange::{Exchange, SwapBuffer};
use crate::ops::fault::FaultOutcome;
use crate::ops::migrate::Destination;
use crate::paging::Entry;
use std::vec;

const M2: u64 = 2 << 20;
const FRAMES: u64 = 8192;

fn arena<R>(f: impl FnOnce(&Env<'_, Arena>) -> R) -> R {
    with_env(Arena::new(FRAMES), FRAMES, &[], f)
}

fn head_at<'a>(env: &Env<'a, Arena>, space: &AddressSpace<'a, Arena>, va: u64) -> Pfn {
    let t = space.translate(va).expect("mapped");
    env.mm.head_of(Pfn::containing(t.pa)).expect("allocated")
}

#[test]
fn a_batch_over_two_spaces_shoots_down_once_on_the_union_of_their_cpus() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let b = env.mm.new_space().unwrap();
        a.cpus().insert(1);
        b.cpus().insert(2);
        let flags = VmaFlags::private(HugePolicy::Never, true);
        env.mm
            .map_anon(&a, 0x10_0000, 0x1000, flags.clone())
            .unwrap();
        env.mm.map_anon(&b, 0x20_0000, 0x1000, flags).unwrap();
        env.mm.populate(&a, 0x10_0000, 0x1000).unwrap();
        env.mm.populate(&b, 0x20_0000, 0x1000).unwrap();
        let (ha, hb) = (head_at(env, &a, 0x10_0000), head_at(env, &b, 0x20_0000));
        env.log.take();
        let results = env
            .mm
            .migrate_batch(&[(ha, Destination::Any), (hb, Destination::Any)]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let shootdowns: Vec<_> = env
            .log
            .take()
            .into_iter()
            .filter_map(|e| match e {
                Event::Shootdown { cpus, ranges, .. } => Some((cpus, ranges)),
                _ => None,
            })
            .collect();
        assert_eq!(
            shootdowns.len(),
            1,
            "one request for the batch: {shootdowns:?}"
        );
        let (cpus, ranges) = &shootdowns[0];
        assert!(cpus.contains(1) && cpus.contains(2) && cpus.len() == 2);
        assert_eq!(ranges.len(), 2);
        a.cpus().remove(1);
        b.cpus().remove(2);
        env.audit();
    });
}

#[test]
fn a_claim_refuses_a_block_that_changed_since_it_was_looked_at() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        let flags = VmaFlags::private(HugePolicy::Always, true);
        env.mm.map_anon(&s, 0x4000_0000, M2, flags).unwrap();
        env.mm.populate(&s, 0x4000_0000, M2).unwrap();
        let head = head_at(env, &s, 0x4000_0000);
        let meta = env.mm.meta(head).unwrap();
        let refs = meta.refcount();
        // Seen as a 4 KiB block before the lock, a 2 MiB block under it: a destination
        // sized from the first look would map 511 frames of others.
        let stale = Seen { order: 0 };
        let claim = env.mm.claim_block(&env.mm.rmap.lock(), head, stale);
        assert!(matches!(claim, Err(MigrateError::Changed)));
        assert!(!meta.is_claimed());
        assert_eq!(meta.refcount(), refs);
        env.audit();
    });
}

/// An exchange whose transform also overwrites one of its migration entries, as corrupt
/// tables would: the engine must drop that mapping rather than leave an entry behind.
struct Corrupting<'x, 'm, M: PhysMem> {
    swap: Exchange,
    space: &'x AddressSpace<'m, M>,
    va: u64,
}

impl<'x, 'm, M: PhysMem> Move<'m, M> for Corrupting<'x, 'm, M> {
    type Output = ();

    fn blocks(&self) -> &[Pfn] {
        Move::<M>::blocks(&self.swap)
    }

    fn check(&self, mm: &Mm<'m, M>, orders: &[u8]) -> Result<(), MigrateError> {
        Move::<M>::check(&self.swap, mm, orders)
    }

    fn prepare(
        &mut self,
        mm: &Mm<'m, M>,
        claimed: &[Claimed],
        at: Option<Result<Pfn, AllocError>>,
    ) -> Result<(), MigrateError> {
        self.swap.prepare(mm, claimed, at)
    }

    fn abandon(&mut self, drops: &mut ClaimDrops<'_, 'm, M>, claimed: &[Claimed]) {
        self.swap.abandon(drops, claimed)
    }

    fn transform(&mut self, mm: &Mm<'m, M>, claimed: &[Claimed]) {
        self.swap.transform(mm, claimed);
        let mut st = self.space.state.lock();
        let cur = st.pt.entry_at(self.va, 1).unwrap();
        st.pt
            .compare_exchange_leaf(self.va, 1, cur, Entry::from_raw(0))
            .unwrap();
    }

    fn target(&self, i: usize) -> Pfn {
        Move::<M>::target(&self.swap, i)
    }

    fn finish(
        self,
        claimed: &[Claimed],
        drops: &mut ClaimDrops<'_, 'm, M>,
    ) -> Result<(), MigrateError> {
        self.swap.finish(claimed, drops)
    }
}

#[test]
fn a_slot_that_lost_its_migration_entry_is_reported_and_nothing_waits_forever() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        let flags = VmaFlags::private(HugePolicy::Never, true);
        env.mm.map_anon(&s, 0x10_0000, 0x2000, flags).unwrap();
        env.mm.populate(&s, 0x10_0000, 0x2000).unwrap();
        assert!(write_user(env.mem, &s, 0x10_0000, 1));
        assert!(write_user(env.mem, &s, 0x10_1000, 2));
        let (h0, h1) = (head_at(env, &s, 0x10_0000), head_at(env, &s, 0x10_1000));
        let mv = Corrupting {
            swap: Exchange::new(h0, h1, SwapBuffer::Page),
            space: &s,
            va: 0x10_0000,
        };
        let results = env.mm.complete_moves(env.mm.begin_moves(vec![mv]));
        assert_eq!(results, [Err(MigrateError::Inconsistent)]);
        // No migration entry is left for a CPU to wait on; the lost mapping is gone from
        // the reverse map with its counts, the other one moved.
        assert!(s.state.lock().migrating.is_empty());
        assert_eq!(env.mm.migration_entry_at(&s, 0x10_0000), None);
        assert!(s.translate(0x10_0000).is_none());
        assert_eq!(read_user(env.mem, &s, 0x10_1000), Some(2));
        env.audit();
        // The page faults in afresh.
        assert!(env.mm.handle_fault(&s, 0x10_0000, true).is_ok());
        env.audit();
    });
}

#[test]
fn completing_a_batch_leaves_the_entries_of_another_batch_in_the_same_space() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        let flags = VmaFlags::private(HugePolicy::Never, true);
        env.mm.map_anon(&s, 0x10_0000, 0x4000, flags).unwrap();
        env.mm.populate(&s, 0x10_0000, 0x4000).unwrap();
        let vas = [0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000];
        for (i, &va) in vas.iter().enumerate() {
            assert!(write_user(env.mem, &s, va, i as u64 + 1));
        }
        let h: Vec<Pfn> = vas.iter().map(|&va| head_at(env, &s, va)).collect();
        let first = env
            .mm
            .begin_moves(vec![Exchange::new(h[0], h[1], SwapBuffer::Page)]);
        let second = env
            .mm
            .begin_moves(vec![Exchange::new(h[2], h[3], SwapBuffer::Page)]);
        assert_eq!(s.state.lock().migrating.len(), 4);
        assert_eq!(env.mm.complete_moves(first), [Ok(())]);
        // The second batch's entries are still listed, and a CPU touching them waits.
        assert_eq!(s.state.lock().migrating.len(), 2);
        assert!(env.mm.migration_entry_at(&s, vas[2]).is_some());
        assert!(matches!(
            env.mm.handle_fault(&s, vas[3], false),
            Ok(FaultOutcome::WaitMigration(_))
        ));
        assert_eq!(env.mm.complete_moves(second), [Ok(())]);
        assert!(s.state.lock().migrating.is_empty());
        for (i, &va) in vas.iter().enumerate() {
            assert_eq!(read_user(env.mem, &s, va), Some(i as u64 + 1));
        }
        assert_eq!(head_at(env, &s, vas[0]), h[1]);
        assert_eq!(head_at(env, &s, vas[3]), h[2]);
        env.audit();
    });
}
