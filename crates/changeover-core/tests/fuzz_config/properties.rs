use super::*;

#[test]
fn the_base_configs_are_valid() {
    for base in BASES {
        let loaded = config::parse(FILE, base, Path::new("/nonexistent"))
            .unwrap_or_else(|e| panic!("{e:?}\n{base}"));
        assert!(
            loaded.warnings.is_empty(),
            "base config warns: {:?}",
            loaded.warnings
        );
    }
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn random_unicode_never_panics(text in any::<String>()) {
        check(&text)?;
    }


    #[test]
    fn a_valid_config_cut_at_any_byte(base in prop::sample::select(BASES), at in any::<prop::sample::Index>()) {
        check(&truncate(base, at.index(base.len() + 1)))?;
    }
}

proptest! {
    #![proptest_config(cases(600))]

    #[test]
    fn token_soup_never_panics(text in token_soup()) {
        check(&text)?;
    }
}

proptest! {
    #![proptest_config(cases(4000))]

    #[test]
    fn mutated_valid_configs(
        base in prop::sample::select(BASES),
        mutations in prop::collection::vec(mutation(), 1..5),
        cut in prop::option::weighted(0.15, any::<prop::sample::Index>()),
    ) {
        let mut text = base.to_string();
        for m in &mutations {
            text = apply(&text, m);
        }
        if let Some(at) = cut {
            text = truncate(&text, at.index(text.len() + 1));
        }
        check(&text)?;
    }
}

/// What the search above found (both panicked before their fixes), kept as
/// plain cases.
#[test]
fn found_by_the_fuzzer() {
    let cases: Vec<String> = vec![
        // A port range past i64::MAX: the check overflowed.
        RICH.replace("first_port = 8081", "first_port = 9223372036854775807"),
        // An unknown placeholder after TOML escapes and multi-byte text:
        // its offset in the decoded string is not its offset in the file.
        SPEC.replace(
            "run = \"sudo /opt/shop/bin/switch {version}\"",
            "run = \"\\\\ééé{x}\"",
        ),
        SPEC.replace(
            "run = \"sudo /opt/shop/bin/switch {version}\"",
            "run = \"\\u00e9\\u00e9\\u00e9\\u00e9 {verison}\"",
        ),
        SPEC.replace(
            "run = \"sudo /opt/shop/bin/switch {version}\"",
            "run = \"\"\"\n  é {bogus}\"\"\"",
        ),
    ];
    for text in cases {
        if let Err(e) = check(&text) {
            panic!("{e}\n--- config ---\n{text}");
        }
    }
    // The unknown placeholder is still pointed at exactly.
    let text = SPEC.replace(
        "run = \"sudo /opt/shop/bin/switch {version}\"",
        "run = \"\\t\\u00e9 {verison}\"",
    );
    let err = config::parse(FILE, &text, Path::new(".")).unwrap_err();
    let e = &err.errors[0];
    assert!(e.message.contains("{verison}"), "{}", e.message);
    let line = text.lines().position(|l| l.starts_with("run = ")).unwrap() + 1;
    let col = text
        .lines()
        .nth(line - 1)
        .unwrap()
        .find("{verison}")
        .unwrap()
        + 1;
    assert_eq!(e.location, format!("{FILE}:{line}:{col}"));
}
