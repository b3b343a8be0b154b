//! Unit tests of migration.

use super::*;
use crate::aspace::testing::{read_user, with_env, write_user, Env};
use crate::aspace::AddressSpace;
use crate::backend::phys::Arena;
use crate::base::addr::PageSize;
use crate::mapping::region::SharedRegion;
use crate::mapping::rmap::RmapEntry;
use crate::mapping::vma::{HugePolicy, SharedBacking, VmaFlags};
use crate::ops::fault::FaultOutcome;
use crate::paging::MigrationEntry;
use core::sync::atomic::{AtomicBool, Ordering};
use x86_64::VirtAddr;

const M2: u64 = 2 << 20;
const FRAMES: u64 = 8192;

fn arena<R>(f: impl FnOnce(&Env<'_, Arena>) -> R) -> R {
    with_env(Arena::new(FRAMES), FRAMES, &[], f)
}

fn head_at<'a>(env: &Env<'a, Arena>, space: &AddressSpace<'a, Arena>, va: u64) -> Pfn {
    let pa = space.translate(va).unwrap().pa;
    env.mm.head_of(Pfn::containing(pa)).unwrap()
}

#[test]
fn a_fault_during_migration_waits_then_sees_the_data() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        let flags = VmaFlags::private(HugePolicy::Always, true);
        env.mm.map_anon(&s, 0x4000_0000, M2, flags).unwrap();
        env.mm.populate(&s, 0x4000_0000, M2).unwrap();
        assert!(write_user(env.mem, &s, 0x4012_3450, 0x5eed));
        let src = head_at(env, &s, 0x4000_0000);
        let batch = env.mm.begin_migrations(&[(src, Destination::Any)]);
        assert_eq!(batch.live(), 1);
        assert!(s.translate(0x4012_3450).is_none());
        let (start, raw) = env.mm.migration_entry_at(&s, 0x4012_3450).unwrap();
        assert_eq!(start, 0x4000_0000);
        assert_eq!(MigrationEntry::decode(raw, 2).unwrap().source_pfn(), src);
        let Ok(FaultOutcome::WaitMigration(wait)) = env.mm.handle_fault(&s, 0x4012_3450, true)
        else {
            panic!("a migration entry must make the fault wait");
        };
        assert_eq!(wait.frame(), src);
        assert!(!env.mm.migration_done(&wait));
        assert_eq!(
            env.mm.pin(&s, 0x4012_3450),
            Err(crate::aspace::PinError::Migrating)
        );
        let results = env.mm.complete_moves(batch);
        let dst = results[0].unwrap();
        assert!(env.mm.migration_done(&wait));
        env.mm.wait_migration(&wait);
        assert_eq!(
            env.mm.handle_fault(&s, 0x4012_3450, true),
            Ok(FaultOutcome::Spurious)
        );
        assert_eq!(read_user(env.mem, &s, 0x4012_3450), Some(0x5eed));
        assert_eq!(head_at(env, &s, 0x4000_0000), dst);
        assert!(!env.mm.meta(dst).unwrap().is_claimed());
        env.audit();
    });
}

#[test]
fn unmap_and_protect_wait_for_a_migration_in_their_range() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        let flags = VmaFlags::private(HugePolicy::Never, true);
        env.mm.map_anon(&s, 0x10_0000, 0x2000, flags).unwrap();
        env.mm.populate(&s, 0x10_0000, 0x2000).unwrap();
        let src = head_at(env, &s, 0x10_1000);
        let batch = env.mm.begin_migrations(&[(src, Destination::Any)]);
        // The other page is not under migration: no wait.
        env.mm.protect(&s, 0x10_0000, 0x1000, false).unwrap();
        let done = AtomicBool::new(false);
        let results = std::thread::scope(|scope| {
            scope.spawn(|| {
                env.mm.unmap(&s, 0x10_0000, 0x2000).unwrap();
                done.store(true, Ordering::Release);
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(
                !done.load(Ordering::Acquire),
                "unmap went through a migration entry"
            );
            env.mm.complete_moves(batch)
        });
        assert!(done.load(Ordering::Acquire));
        assert!(results[0].is_ok());
        assert!(s.leaves().is_empty());
        env.audit();
    });
}

#[test]
fn a_page_whose_tables_disagree_is_put_back_exactly() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let b = env.mm.new_space().unwrap();
        let region = SharedRegion::new(M2).unwrap();
        let flags = VmaFlags {
            shared: Some(SharedBacking {
                region: region.clone(),
                offset: 0,
            }),
            ..VmaFlags::private(HugePolicy::Always, true)
        };
        env.mm.map_anon(&a, 0x4000_0000, M2, flags).unwrap();
        env.mm.populate(&a, 0x4000_0000, M2).unwrap();
        assert!(write_user(env.mem, &a, 0x4000_0008, 9));
        let src = head_at(env, &a, 0x4000_0000);
        let leaf_before = a.state.lock().pt.entry_at(0x4000_0000, 2).unwrap();
        // B claims a mapping its tables do not have.
        let bogus = RmapEntry {
            space: b.id(),
            va: VirtAddr::new(0x9000_0000),
            size: PageSize::Size2M,
            offset: 0,
        };
        env.mm.rmap.lock().insert(src, bogus);
        let free = env.free_frames();
        let shootdowns = env.tlb.calls();
        assert_eq!(
            env.mm.migrate_one(src, Destination::Any),
            Err(MigrateError::Inconsistent)
        );
        assert_eq!(
            a.state.lock().pt.entry_at(0x4000_0000, 2),
            Some(leaf_before)
        );
        assert!(a.state.lock().migrating.is_empty());
        assert_eq!(env.free_frames(), free, "the destination went back");
        assert_eq!(env.tlb.calls(), shootdowns, "nothing to shoot down");
        assert!(!crate::frame::meta::FrameMeta::is_claimed(
            env.mm.meta(src).unwrap()
        ));
        assert_eq!(read_user(env.mem, &a, 0x4000_0008), Some(9));
        env.mm.rmap.lock().remove(src, b.id(), 0x9000_0000);
        env.audit();
        assert!(env.mm.migrate_one(src, Destination::Any).is_ok());
        assert_eq!(read_user(env.mem, &a, 0x4000_0008), Some(9));
        env.audit();
    });
}
