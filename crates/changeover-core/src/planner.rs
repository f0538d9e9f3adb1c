//! Pure planning: which units go in which wave, and how many may be out of
//! service at once. No I/O, property-tested.

use crate::plan::{Amount, Rollout};
use crate::unit::Unit;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

/// A rollout's schedule, computed once: the waves (unit indices), how many
/// units may be out of service at once, and whether a host may have only
/// one unit out at a time (groups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub waves: Vec<Vec<usize>>,
    pub bound: usize,
    pub one_per_host: bool,
}

impl Schedule {
    pub fn new(units: &[Arc<Unit>], rollout: &Rollout) -> Schedule {
        let waves = waves(units, rollout);
        let bound = match rollout {
            Rollout::Window(w) => w.of(units.len()).min(units.len().max(1)),
            _ => waves.iter().map(|w| w.len()).max().unwrap_or(1),
        };
        Schedule {
            waves,
            bound,
            one_per_host: matches!(rollout, Rollout::Groups(_)),
        }
    }
}

/// The waves of a rollout over `units` (already in stable order), as lists of
/// unit indices (positions in `units`). Every unit is in exactly one wave.
///
/// - `Batch`: consecutive slices with Ansible `serial` semantics (see
///   [`batch_ranges`]).
/// - `Window`: one wave holding everything (the window bounds it instead).
/// - `Groups`: hosts, in order of first appearance, cut into groups of
///   `amount` hosts (a percentage of the hosts rounded down, at least 1);
///   per group one wave per instance number, so a host never has two units in
///   one wave.
pub fn waves(units: &[Arc<Unit>], rollout: &Rollout) -> Vec<Vec<usize>> {
    match rollout {
        Rollout::Batch(ramp) => batch_ranges(units.len(), ramp)
            .into_iter()
            .map(|r| r.collect())
            .collect(),
        Rollout::Window(_) if units.is_empty() => Vec::new(),
        Rollout::Window(_) => vec![(0..units.len()).collect()],
        Rollout::Groups(amount) => group_waves(units, *amount),
    }
}

/// Split `total` units into waves with Ansible `serial` semantics: each ramp
/// entry gives one wave's size (a count, or a percentage of `total` rounded
/// down, at least 1); the last entry repeats until every unit is in a wave.
pub fn batch_ranges(total: usize, ramp: &[Amount]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while start < total && !ramp.is_empty() {
        let amount = ramp[i.min(ramp.len() - 1)];
        let size = amount.of(total).min(total - start);
        out.push(start..start + size);
        start += size;
        i += 1;
    }
    out
}

fn group_waves(units: &[Arc<Unit>], amount: Amount) -> Vec<Vec<usize>> {
    // Each host's group, from the order its first unit appears (the stable
    // order); one pass, so 10,000 hosts cost no more than a sort.
    let mut group_of: HashMap<&str, usize> = HashMap::new();
    for u in units {
        let next = group_of.len();
        group_of.entry(u.host.name.as_str()).or_insert(next);
    }
    let size = amount.of(group_of.len()).min(group_of.len()).max(1);
    let mut waves: BTreeMap<(usize, u32), Vec<usize>> = BTreeMap::new();
    for (i, u) in units.iter().enumerate() {
        let group = group_of[u.host.name.as_str()] / size;
        waves.entry((group, u.instance)).or_default().push(i);
    }
    waves.into_values().collect()
}

/// How many units may be out of service at once: the largest wave for
/// batches and groups, the window otherwise. Never below 1.
pub fn out_of_service_bound(units: &[Arc<Unit>], rollout: &Rollout) -> usize {
    Schedule::new(units, rollout).bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::Host;
    use proptest::prelude::*;

    /// `hosts` hosts with `instances` units each, in the stable order.
    fn fleet(hosts: usize, instances: u32) -> Vec<Arc<Unit>> {
        let mut units = Vec::new();
        for h in 0..hosts {
            let host = Arc::new(Host {
                name: format!("web-{}", h + 1),
                address: format!("10.0.{}.{}", h / 250, h % 250 + 1),
                tags: vec![],
                ssh_user: None,
                ssh_port: None,
                instance_id: None,
                instances: None,
            });
            for instance in 1..=instances {
                units.push(Arc::new(Unit {
                    index: units.len(),
                    host: Arc::clone(&host),
                    instance,
                    port: Some(8080 + instance as u16),
                }));
            }
        }
        units
    }

    #[test]
    fn groups_of_35_percent_walk_instance_by_instance() {
        let units = fleet(6, 3);
        let ws = waves(&units, &Rollout::Groups(Amount::Percent(35.0)));
        let named: Vec<Vec<String>> = ws
            .iter()
            .map(|w| w.iter().map(|&i| units[i].name()).collect())
            .collect();
        assert_eq!(
            named.len(),
            9,
            "3 groups of 2 hosts, 3 instances each: {named:?}"
        );
        assert_eq!(named[0], ["web-1#1", "web-2#1"]);
        assert_eq!(named[1], ["web-1#2", "web-2#2"]);
        assert_eq!(named[2], ["web-1#3", "web-2#3"]);
        assert_eq!(named[3], ["web-3#1", "web-4#1"]);
        assert_eq!(named[8], ["web-5#3", "web-6#3"]);
        assert_eq!(
            out_of_service_bound(&units, &Rollout::Groups(Amount::Percent(35.0))),
            2
        );
        // Fewer hosts than one percent step: still one host per group.
        let small = fleet(2, 2);
        assert_eq!(
            waves(&small, &Rollout::Groups(Amount::Percent(10.0))).len(),
            4
        );
    }

    fn amount() -> impl Strategy<Value = Amount> {
        prop_oneof![
            (1u64..50).prop_map(Amount::Count),
            (1u32..=100).prop_map(|p| Amount::Percent(p as f64)),
        ]
    }

    #[test]
    fn ansible_examples() {
        let b = |r: Vec<Amount>, n| {
            batch_ranges(n, &r)
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
            out_of_service_bound(&fleet(10, 1), &Rollout::Window(Amount::Percent(25.0))),
            2
        );
        assert_eq!(
            out_of_service_bound(&fleet(3, 1), &Rollout::Window(Amount::Percent(10.0))),
            1
        );
    }

    proptest! {
        #[test]
        fn every_unit_exactly_once_in_order(total in 0usize..500, ramp in prop::collection::vec(amount(), 1..5)) {
            let ws = waves(&fleet(total, 1), &Rollout::Batch(ramp.clone()));
            let flat: Vec<usize> = ws.iter().flat_map(|w| w.clone()).collect();
            prop_assert_eq!(flat, (0..total).collect::<Vec<_>>());
            for w in &ws {
                prop_assert!(!w.is_empty(), "empty wave");
            }
        }

        #[test]
        fn wave_sizes_follow_the_ramp(total in 1usize..500, ramp in prop::collection::vec(amount(), 1..5)) {
            let ws = batch_ranges(total, &ramp);
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
            let units = fleet(total, 1);
            let bound = out_of_service_bound(&units, &r);
            prop_assert!(bound >= 1);
            for w in waves(&units, &r) {
                prop_assert!(w.len() <= bound);
            }
        }

        #[test]
        fn groups_cover_every_unit_once_and_never_two_of_a_host(hosts in 1usize..40, instances in 1u32..5, g in amount()) {
            let units = fleet(hosts, instances);
            let ws = waves(&units, &Rollout::Groups(g));
            let mut flat: Vec<usize> = ws.iter().flatten().copied().collect();
            flat.sort_unstable();
            prop_assert_eq!(flat, (0..units.len()).collect::<Vec<_>>());
            let bound = out_of_service_bound(&units, &Rollout::Groups(g));
            for w in &ws {
                prop_assert!(!w.is_empty() && w.len() <= bound);
                let mut seen = std::collections::BTreeSet::new();
                for &i in w {
                    prop_assert!(seen.insert(units[i].host.name.clone()), "two units of one host in a wave");
                }
            }
        }

        #[test]
        fn window_bound_at_least_one_at_most_total(total in 1usize..500, w in amount()) {
            let b = out_of_service_bound(&fleet(total, 1), &Rollout::Window(w));
            prop_assert!(b >= 1 && b <= total);
        }

        #[test]
        fn percent_of_is_floor_at_least_one(total in 1usize..10_000, p in 1u32..=100) {
            let n = Amount::Percent(p as f64).of(total);
            prop_assert_eq!(n, ((total * p as usize) / 100).max(1));
        }
    }
}
