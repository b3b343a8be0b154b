//! Property tests of the rank bitmap.

use super::*;
use proptest::prelude::*;

proptest! {
    /// Against the bits one by one: rank, count, get and word_at at every position,
    /// past the end included.
    #[test]
    fn bits_follow_a_bool_model(words in proptest::collection::vec(any::<u64>(), 0..5)) {
        let model: Vec<bool> = words
            .iter()
            .flat_map(|w| (0..64).map(move |b| w >> b & 1 == 1))
            .collect();
        let bits = Bits::new(words);
        let at = |i: u64| model.get(i as usize).copied().unwrap_or(false);
        let end = model.len() as u64 + 70;
        for i in 0..end {
            let rank = model.iter().take(i as usize).filter(|&&b| b).count() as u64;
            prop_assert_eq!(bits.rank(i), rank);
            prop_assert_eq!(bits.get(i), at(i));
            let word = (0..64).fold(0u64, |w, b| w | u64::from(at(i + b)) << b);
            prop_assert_eq!(bits.word_at(i), word);
            let j = (i + 37).min(end);
            prop_assert_eq!(bits.count(i, j), (i..j).filter(|&p| at(p)).count() as u64);
        }
    }
}
