//! Pure planning: which units go in which wave, and how many may be out of
//! service at once. No I/O, property-tested.

use crate::plan::{Amount, Rollout};
use std::ops::Range;

/// Split `total` units (already in stable order) into waves with Ansible
/// `serial` semantics: each ramp entry gives one wave's size (a count, or a
/// percentage of `total` rounded down, at least 1); the last entry repeats
/// until every unit is in a wave. A window rollout is one wave holding
/// everything (the window bounds it instead).
pub fn waves(total: usize, rollout: &Rollout) -> Vec<Range<usize>> {
    let ramp: &[Amount] = match rollout {
        Rollout::Batch(ramp) => ramp,
        Rollout::Window(_) => {
            return std::iter::once(0..total)
                .filter(|w| !w.is_empty())
                .collect()
        }
    };
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while start < total {
        let amount = ramp[i.min(ramp.len() - 1)];
        let size = amount.of(total).min(total - start);
        out.push(start..start + size);
        start += size;
        i += 1;
    }
    out
}

/// How many units may be out of service at once: the largest wave for
/// batches, the window otherwise. Never below 1.
pub fn out_of_service_bound(total: usize, rollout: &Rollout) -> usize {
    match rollout {
        Rollout::Batch(_) => waves(total, rollout)
            .iter()
            .map(|w| w.len())
            .max()
            .unwrap_or(1),
        Rollout::Window(w) => w.of(total).min(total.max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn amount() -> impl Strategy<Value = Amount> {
        prop_oneof![
            (1u64..50).prop_map(Amount::Count),
            (1u32..=100).prop_map(|p| Amount::Percent(p as f64)),
        ]
    }

    #[test]
    fn ansible_examples() {
        let b = |r: Vec<Amount>, n| {
            waves(n, &Rollout::Batch(r))
                .iter()
                .map(|w| w.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(b(vec![Amount::Percent(25.0)], 8), vec![2, 2, 2, 2]);
        assert_eq!(
            b(
                vec![
                    Amount::Count(1),
                    Amount::Percent(10.0),
                    Amount::Percent(100.0)
                ],
                20
            ),
            vec![1, 2, 17]
        );
        assert_eq!(b(vec![Amount::Percent(10.0)], 5), vec![1, 1, 1, 1, 1]);
        assert_eq!(b(vec![Amount::Count(3)], 7), vec![3, 3, 1]);
        assert_eq!(b(vec![Amount::Count(1)], 0), Vec::<usize>::new());
        assert_eq!(
            out_of_service_bound(10, &Rollout::Window(Amount::Percent(25.0))),
            2
        );
        assert_eq!(
            out_of_service_bound(3, &Rollout::Window(Amount::Percent(10.0))),
            1
        );
    }

    proptest! {
        #[test]
        fn every_unit_exactly_once_in_order(total in 0usize..500, ramp in prop::collection::vec(amount(), 1..5)) {
            let ws = waves(total, &Rollout::Batch(ramp.clone()));
            let flat: Vec<usize> = ws.iter().flat_map(|w| w.clone()).collect();
            prop_assert_eq!(flat, (0..total).collect::<Vec<_>>());
            for w in &ws {
                prop_assert!(!w.is_empty(), "empty wave");
            }
        }

        #[test]
        fn wave_sizes_follow_the_ramp(total in 1usize..500, ramp in prop::collection::vec(amount(), 1..5)) {
            let ws = waves(total, &Rollout::Batch(ramp.clone()));
            for (i, w) in ws.iter().enumerate() {
                let want = ramp[i.min(ramp.len() - 1)].of(total);
                // Only the final wave may be cut short.
                if i + 1 < ws.len() {
                    prop_assert_eq!(w.len(), want);
                } else {
                    prop_assert!(w.len() <= want && !w.is_empty());
                }
            }
        }

        #[test]
        fn bound_holds_every_wave(total in 1usize..500, ramp in prop::collection::vec(amount(), 1..5)) {
            let r = Rollout::Batch(ramp);
            let bound = out_of_service_bound(total, &r);
            prop_assert!(bound >= 1);
            for w in waves(total, &r) {
                prop_assert!(w.len() <= bound);
            }
        }

        #[test]
        fn window_bound_at_least_one_at_most_total(total in 1usize..500, w in amount()) {
            let b = out_of_service_bound(total, &Rollout::Window(w));
            prop_assert!(b >= 1 && b <= total);
        }

        #[test]
        fn percent_of_is_floor_at_least_one(total in 1usize..10_000, p in 1u32..=100) {
            let n = Amount::Percent(p as f64).of(total);
            prop_assert_eq!(n, ((total * p as usize) / 100).max(1));
        }
    }
}
