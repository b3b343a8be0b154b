//! Property tests of the grouped rank bitmap.

use super::*;
use proptest::prelude::*;

/// A length over a few groups, and fills that set or clear ranges of it: whole groups,
/// parts of one, ranges across several, past the end and empty ones.
fn fills() -> impl Strategy<Value = (u64, Vec<(u64, u64, bool)>)> {
    (1u64..4 * GROUP + 100).prop_flat_map(|len| {
        let fill = (0..len + 70, 0u64..2 * GROUP + 70, any::<bool>())
            .prop_map(|(i, n, on)| (i, i + n, on));
        (Just(len), proptest::collection::vec(fill, 0..12))
    })
}

proptest! {
    /// Against the bits one by one, after fills in any order: rank, count, get and
    /// word_at at every position, past the end included.
    #[test]
    fn bits_follow_a_bool_model((len, fills) in fills()) {
        let mut model = vec![false; len as usize];
        let mut builder = BitsBuilder::new(len);
        for &(i, j, on) in &fills {
            builder.fill(i, j, on);
            for b in model.iter_mut().take(j as usize).skip(i as usize) {
                *b = on;
            }
        }
        let bits = builder.finish();
        let at = |i: u64| model.get(i as usize).copied().unwrap_or(false);
        let end = len + 70;
        let mut rank = 0;
        for i in 0..end {
            prop_assert_eq!(bits.rank(i), rank);
            rank += u64::from(at(i));
            prop_assert_eq!(bits.get(i), at(i));
            let word = (0..64).fold(0u64, |w, b| w | u64::from(at(i + b)) << b);
            prop_assert_eq!(bits.word_at(i), word);
            let j = (i + 37).min(end);
            prop_assert_eq!(bits.count(i, j), (i..j).filter(|&p| at(p)).count() as u64);
        }
    }
}

/// A bitmap of whole groups set and cleared keeps no words: the memory a view of
/// mostly free memory costs is its groups' states.
#[test]
fn whole_groups_cost_no_words() {
    let mut builder = BitsBuilder::new(64 * GROUP);
    builder.fill(GROUP, 10 * GROUP, true);
    builder.fill(20 * GROUP, 64 * GROUP, true);
    builder.fill(30 * GROUP, 31 * GROUP, false);
    let bits = builder.finish();
    assert!(bits.groups.words.is_empty());
    assert_eq!(bits.count(0, 64 * GROUP), 9 * GROUP + 43 * GROUP);
}
