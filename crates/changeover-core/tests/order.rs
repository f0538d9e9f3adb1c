//! Unit order is stable: sorted by address (numerically), then instance,
//! whatever order the config lists hosts in, so a 10 % deploy followed by a
//! 25 % deploy touches only 15 % more.

use changeover_core::config;
use proptest::prelude::*;
use std::path::Path;

fn config_with(order: &[usize], percent: u32) -> String {
    let mut s = format!(
        "app = \"t\"\n[[load_balancers]]\nkind = \"none\"\n[drain]\nmode = \"fixed\"\ntimeout = \"0s\"\n[deploy]\nrun = \"x\"\n\
         [targets.some]\ntags = [\"prod\"]\npercent = {percent}\n[targets.more]\ntags = [\"prod\"]\npercent = 25\n"
    );
    for &i in order {
        s.push_str(&format!(
            "[[hosts]]\nname = \"h{i}\"\naddress = \"10.0.{}.{}\"\ntags = [\"prod\"]\n",
            i / 200,
            i % 200 + 1
        ));
    }
    s
}

proptest! {
    #[test]
    fn order_does_not_depend_on_config_order(mut order in Just((0..60).collect::<Vec<usize>>()).prop_shuffle()) {
        let plan = config::parse("t.toml", &config_with(&order, 10), Path::new(".")).unwrap().plan;
        let names: Vec<String> = plan.units().iter().map(|u| u.host.name.clone()).collect();
        order.sort();
        let expected: Vec<String> = order.iter().map(|i| format!("h{i}")).collect();
        prop_assert_eq!(names, expected);
        for (i, u) in plan.units().iter().enumerate() {
            prop_assert_eq!(u.index, i);
        }
    }

    #[test]
    fn a_smaller_percent_is_a_prefix_of_a_larger_one(order in Just((0..80).collect::<Vec<usize>>()).prop_shuffle(), p in 1u32..25) {
        let plan = config::parse("t.toml", &config_with(&order, p), Path::new(".")).unwrap().plan;
        let small: Vec<String> = plan.select(Some("some")).unwrap().iter().map(|u| u.name()).collect();
        let large: Vec<String> = plan.select(Some("more")).unwrap().iter().map(|u| u.name()).collect();
        prop_assert!(large.starts_with(&small), "{small:?} not a prefix of {large:?}");
    }
}
