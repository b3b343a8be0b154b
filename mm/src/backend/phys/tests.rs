//! The provided methods of `PhysMem` are sound for every input (run them under Miri to
//! check the unaligned and self-copy cases: they used to be undefined behaviour).

use super::*;

#[test]
fn an_unaligned_word_is_the_word_that_contains_it() {
    let mem = Arena::new(2);
    mem.word(PhysAddr::new(16))
        .store(7, core::sync::atomic::Ordering::Relaxed);
    for pa in 16..24 {
        assert_eq!(
            mem.word(PhysAddr::new(pa))
                .load(core::sync::atomic::Ordering::Relaxed),
            7
        );
    }
}

#[test]
fn frames_are_the_ones_that_contain_the_addresses() {
    let mem = Arena::new(3);
    let w = |pa: u64| mem.word(PhysAddr::new(pa));
    w(PAGE_SIZE).store(5, core::sync::atomic::Ordering::Relaxed);
    w(2 * PAGE_SIZE - 8).store(6, core::sync::atomic::Ordering::Relaxed);
    // Unaligned: copies frame 1 to frame 2 whole, nothing past frame 2.
    mem.copy_frame(
        PhysAddr::new(2 * PAGE_SIZE + 123),
        PhysAddr::new(PAGE_SIZE + 9),
    );
    assert_eq!(
        w(2 * PAGE_SIZE).load(core::sync::atomic::Ordering::Relaxed),
        5
    );
    assert_eq!(
        w(3 * PAGE_SIZE - 8).load(core::sync::atomic::Ordering::Relaxed),
        6
    );
    // A frame onto itself: nothing happens.
    mem.copy_frame(PhysAddr::new(PAGE_SIZE + 8), PhysAddr::new(PAGE_SIZE));
    assert_eq!(w(PAGE_SIZE).load(core::sync::atomic::Ordering::Relaxed), 5);
    // Unaligned zeroing clears exactly the frame that contains the address.
    mem.zero_frame(PhysAddr::new(PAGE_SIZE + 4095));
    assert_eq!(w(PAGE_SIZE).load(core::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(
        w(2 * PAGE_SIZE).load(core::sync::atomic::Ordering::Relaxed),
        5
    );
}

#[test]
fn swap_frame_exchanges_two_frames_whole_with_any_buffer_size() {
    use core::sync::atomic::Ordering::Relaxed;
    for words in [0usize, 1, 3, 64, 512, 700] {
        let mem = Arena::new(4);
        let w = |pa: u64| mem.word(PhysAddr::new(pa));
        for i in 0..PAGE_SIZE / 8 {
            w(PAGE_SIZE + i * 8).store(i, Relaxed);
            w(2 * PAGE_SIZE + i * 8).store(!i, Relaxed);
        }
        w(3 * PAGE_SIZE).store(99, Relaxed);
        let mut buf = std::vec![0u64; words];
        mem.swap_frame(
            PhysAddr::new(PAGE_SIZE + 5),
            PhysAddr::new(2 * PAGE_SIZE),
            &mut buf,
        );
        let swapped = words > 0;
        for i in 0..PAGE_SIZE / 8 {
            let (a, b) = if swapped { (!i, i) } else { (i, !i) };
            assert_eq!(
                w(PAGE_SIZE + i * 8).load(Relaxed),
                a,
                "{words} words, word {i}"
            );
            assert_eq!(
                w(2 * PAGE_SIZE + i * 8).load(Relaxed),
                b,
                "{words} words, word {i}"
            );
        }
        assert_eq!(
            w(3 * PAGE_SIZE).load(Relaxed),
            99,
            "nothing past the frames"
        );
        // A frame with itself: nothing happens.
        mem.swap_frame(
            PhysAddr::new(PAGE_SIZE),
            PhysAddr::new(PAGE_SIZE + 8),
            &mut buf,
        );
        assert_eq!(w(PAGE_SIZE + 8).load(Relaxed), if swapped { !1 } else { 1 });
    }
}

#[test]
fn swap_frame_in_registers_exchanges_two_frames_whole_and_nothing_else() {
    use core::sync::atomic::Ordering::Relaxed;
    let mem = Arena::new(4);
    let w = |pa: u64| mem.word(PhysAddr::new(pa));
    for i in 0..PAGE_SIZE / 8 {
        w(PAGE_SIZE + i * 8).store(i, Relaxed);
        w(2 * PAGE_SIZE + i * 8).store(!i, Relaxed);
    }
    w(PAGE_SIZE - 8).store(98, Relaxed);
    w(3 * PAGE_SIZE).store(99, Relaxed);
    mem.swap_frame_in_registers(PhysAddr::new(2 * PAGE_SIZE + 17), PhysAddr::new(PAGE_SIZE));
    for i in 0..PAGE_SIZE / 8 {
        assert_eq!(w(PAGE_SIZE + i * 8).load(Relaxed), !i, "word {i}");
        assert_eq!(w(2 * PAGE_SIZE + i * 8).load(Relaxed), i, "word {i}");
    }
    assert_eq!(
        w(PAGE_SIZE - 8).load(Relaxed),
        98,
        "nothing before the frames"
    );
    assert_eq!(
        w(3 * PAGE_SIZE).load(Relaxed),
        99,
        "nothing past the frames"
    );
    // A frame with itself: nothing happens.
    mem.swap_frame_in_registers(PhysAddr::new(PAGE_SIZE), PhysAddr::new(PAGE_SIZE + 8));
    assert_eq!(w(PAGE_SIZE + 8).load(Relaxed), !1);
}
