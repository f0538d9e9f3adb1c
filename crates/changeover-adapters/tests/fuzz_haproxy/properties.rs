use super::*;

// ---------------------------------------------------------------------------
// Properties.

/// An error names the balancer and what was wrong.
fn error_ok(e: &LbError, unit: &str, needle: Option<&str>) -> Result<(), TestCaseError> {
    let message = e.to_string();
    prop_assert!(!message.trim().is_empty(), "an empty error: {:?}", e);
    prop_assert!(
        message.contains(&endpoint()),
        "the error does not name the balancer: {}",
        message
    );
    match e {
        LbError::NoSuchMember { member, .. } => {
            prop_assert_eq!(member, &format!("app/{unit}"));
        }
        LbError::Protocol { request, .. } | LbError::Refused { request, .. } => {
            prop_assert!(
                request.contains("show"),
                "the error names the request: {}",
                message
            );
        }
        LbError::Unreachable { .. } | LbError::Other(_) => {}
        LbError::Busy { .. } | LbError::Throttled { .. } | LbError::Unavailable { .. } => {
            prop_assert!(
                false,
                "HAProxy has no busy or throttled answer: {}",
                message
            );
        }
    }
    if let Some(needle) = needle {
        prop_assert!(
            message.contains(needle),
            "the error does not name `{}`: {}",
            needle,
            message
        );
    }
    Ok(())
}

fn status_of(answer: &[u8], names: &[String]) -> Vec<Result<MemberStatus, LbError>> {
    let units: Vec<Unit> = names.iter().map(|n| unit(n)).collect();
    let (out, requests) = with_answers(answer, b"", |lb| async move {
        let refs: Vec<&Unit> = units.iter().collect();
        lb.status(&refs).await
    });
    assert_eq!(requests, vec![SNAPSHOT_REQUEST.to_string()]);
    out
}

fn check_snapshot(
    layout: &Layout,
    servers: &[Server],
    answer: &[u8],
    expect: &Expect,
) -> Result<(), TestCaseError> {
    let mut names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
    // A unit HAProxy has never heard of.
    names.push("ghost-unit".to_string());
    let results = status_of(answer, &names);
    prop_assert_eq!(results.len(), names.len());
    let show = || String::from_utf8_lossy(answer).into_owned();
    // A session count past u64::MAX makes the whole dump unreadable.
    let overflow = servers.iter().any(|s| expected(layout, s).is_none());
    let expect = match expect {
        Expect::Exact if overflow => &Expect::AllErr(Some("overflow".to_string())),
        other => other,
    };
    for (name, result) in names.iter().zip(&results) {
        let want = servers
            .iter()
            .find(|s| &s.name == name)
            .and_then(|s| expected(layout, s));
        let needle = match expect {
            Expect::AllErr(n) => n.as_deref(),
            _ => None,
        };
        match (expect, result) {
            (_, Err(e)) => {
                error_ok(e, name, needle)?;
                if let Expect::Exact = expect {
                    prop_assert!(
                        name == "ghost-unit",
                        "{}: an error for a well-formed answer: {}\n--- answer ---\n{}",
                        name,
                        e,
                        show()
                    );
                    prop_assert!(
                        matches!(e, LbError::NoSuchMember { .. }),
                        "the ghost unit: {}",
                        e
                    );
                }
            }
            (Expect::AllErr(_), Ok(got)) => {
                prop_assert!(
                    false,
                    "{}: read {:?} from a broken answer\n--- answer ---\n{}",
                    name,
                    got,
                    show()
                );
            }
            (Expect::Any, Ok(_)) => {}
            (Expect::Exact | Expect::ErrOrExact, Ok(got)) => {
                prop_assert_eq!(
                    Some(got),
                    want.as_ref(),
                    "{}: a wrong reading\n--- answer ---\n{}",
                    name,
                    show()
                );
            }
        }
    }
    Ok(())
}

/// The answer to one `set server` line of `n` commands.
#[derive(Debug, Clone)]
enum SetAnswer {
    /// One answer per listed item: `None` is HAProxy's empty (success)
    /// answer, `Some(line)` an error message.
    Listed(Vec<Option<String>>),
    Raw(Vec<u8>),
}

fn set_answer(n: usize) -> impl Strategy<Value = SetAnswer> {
    let item = prop_oneof![
        6 => Just(None),
        1 => Just(Some("No such server.".to_string())),
        1 => Just(Some("No such backend.".to_string())),
        1 => Just(Some("Permission denied".to_string())),
        1 => Just(Some("Require 'backend/server'.".to_string())),
        1 => Just(Some("Unknown command:\n  help : this message\n  quit".to_string())),
        1 => "[ -~]{1,30}".prop_map(|s| Some(s.trim().to_string()).filter(|s| !s.is_empty())),
    ];
    prop_oneof![
        4 => prop::collection::vec(item.clone(), n..=n).prop_map(SetAnswer::Listed),
        2 => prop::collection::vec(item, 0..n + 3).prop_map(SetAnswer::Listed),
        2 => prop::collection::vec(any::<u8>(), 0..64).prop_map(SetAnswer::Raw),
    ]
}

fn render_set(a: &SetAnswer) -> Vec<u8> {
    match a {
        SetAnswer::Listed(items) => items
            .iter()
            .map(|i| match i {
                None => "\n".to_string(),
                Some(m) => format!("{m}\n\n"),
            })
            .collect::<String>()
            .into_bytes(),
        SetAnswer::Raw(b) => b.clone(),
    }
}

fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn damaged_answers_are_errors_or_read_exactly(
        servers in servers(),
        layout in layout(),
        damage in damage(),
    ) {
        let (answer, expect) = damaged(&layout, &servers, &damage);
        check_snapshot(&layout, &servers, &answer, &expect)?;
    }
}

proptest! {
    #![proptest_config(cases(600))]

    /// Columns in any order, extra columns, quoted fields, trailing commas,
    /// FRONTEND/BACKEND rows, servers without a state row: read exactly.
    #[test]
    fn well_formed_answers_are_read_exactly(servers in servers(), layout in layout()) {
        let answer = layout.snapshot(&servers);
        check_snapshot(&layout, &servers, answer.as_bytes(), &Expect::Exact)?;
    }

    #[test]
    fn random_bytes_as_status_answer(bytes in prop::collection::vec(any::<u8>(), 0..300), name in server_name()) {
        let results = status_of(&bytes, std::slice::from_ref(&name));
        prop_assert_eq!(results.len(), 1);
        // Random bytes can hardly hold both dumps; if they did, fine.
        if let Err(e) = &results[0] {
            error_ok(e, &name, None)?;
        }
    }

    /// `set server`: one answer per command, empty on success.
    #[test]
    fn set_server_answers(
        (names, answer) in prop::collection::hash_set(server_name(), 1..5)
            .prop_flat_map(|names| {
                let names: Vec<String> = names.into_iter().collect();
                let n = names.len();
                (Just(names), set_answer(n))
            }),
        action in prop::sample::select(vec![LbAction::Drain, LbAction::Disable, LbAction::Enable]),
    ) {
        let units: Vec<Unit> = names.iter().map(|n| unit(n)).collect();
        let bytes = render_set(&answer);
        let (result, requests) = with_answers(b"", &bytes, |lb| {
            async move {
                let refs: Vec<&Unit> = units.iter().collect();
                lb.apply(&refs, action, None).await
            }
        });
        let state = match action {
            LbAction::Drain => "drain",
            LbAction::Disable => "maint",
            LbAction::Enable => "ready",
        };
        let commands: Vec<String> = names
            .iter()
            .map(|n| format!("set server app/{n} state {state}"))
            .collect();
        prop_assert_eq!(requests, vec![commands.join("; ")]);
        match &answer {
            SetAnswer::Listed(items) => {
                let text = String::from_utf8_lossy(&bytes).to_string();
                // The first problem is the error; answers that do not match
                // the commands one to one are a protocol error.
                let want_err = if items.len() != names.len() {
                    Some(format!("expected {} answers, got", names.len()))
                } else {
                    items.iter().zip(&names).find_map(|(i, n)| {
                        i.as_ref().map(|m| {
                            if m == "No such server." || m == "No such backend." {
                                format!("no member app/{n}")
                            } else {
                                m.lines().next().unwrap().trim().trim_end_matches(':').to_string()
                            }
                        })
                    })
                };
                match (&result, want_err) {
                    (Ok(()), None) => {}
                    (Err(e), Some(want)) => {
                        let message = e.to_string();
                        prop_assert!(message.contains(&endpoint()), "{}", message);
                        prop_assert!(message.contains(&want), "{} does not say `{}`\n--- answer ---\n{}", message, want, text);
                    }
                    (got, want) => {
                        prop_assert!(false, "got {:?}, want error {:?}\n--- answer ---\n{}", got, want, text);
                    }
                }
            }
            SetAnswer::Raw(_) => {
                let text = String::from_utf8_lossy(&bytes).to_string();
                match &result {
                    // Success only when every answer was empty, one per command.
                    Ok(()) => {
                        prop_assert!(
                            text.split('\n').all(|l| l.trim_end_matches('\r').is_empty()),
                            "success from {:?}", text
                        );
                    }
                    Err(e) => {
                        let message = e.to_string();
                        prop_assert!(!message.trim().is_empty());
                        prop_assert!(message.contains(&endpoint()), "{}", message);
                    }
                }
            }
        }
    }

    /// Put back by weight without a record: the weight comes from the
    /// snapshot (the configured weight), and a broken snapshot is an error,
    /// never a made-up weight.
    #[test]
    fn weight_put_back_reads_the_configured_weight(
        servers in servers(),
        layout in layout(),
        damage in prop::option::weighted(0.5, damage()),
    ) {
        let (answer, expect) = match &damage {
            None => (layout.snapshot(&servers).into_bytes(), Expect::Exact),
            Some(d) => damaged(&layout, &servers, d),
        };
        let target = servers[0].clone();
        let u = unit(&target.name);
        let (result, requests) = with_answers(&answer, b"\n", |_| async move {
            adapter(Method::Weight).apply(&[&u], LbAction::Enable, None).await
        });
        prop_assert_eq!(&requests[0], SNAPSHOT_REQUEST);
        // The configured weight as HAProxy reported it, when it did.
        let configured = if target.no_state_row {
            layout.has("iweight").then_some(target.iweight)
        } else {
            Some(target.iweight)
        };
        // Only undamaged: a cut may remove the overflowing row.
        let overflow = matches!(expect, Expect::Exact)
            && servers.iter().any(|s| expected(&layout, s).is_none());
        match &result {
            Ok(()) => {
                prop_assert!(!matches!(expect, Expect::AllErr(_)), "put back from a broken answer");
                prop_assert!(!overflow, "put back from an answer with an overflowing count");
                let w = configured.filter(|w| *w > 0);
                prop_assert!(w.is_some(), "put back without a configured weight: {:?}", requests);
                prop_assert_eq!(requests.len(), 2);
                prop_assert_eq!(
                    &requests[1],
                    &format!("set server app/{} weight {}", target.name, w.unwrap())
                );
            }
            Err(e) => {
                prop_assert!(e.to_string().contains(&endpoint()), "{}", e);
                if let Expect::Exact = expect {
                    prop_assert!(
                        overflow || configured.is_none_or(|w| w == 0),
                        "a well-formed answer with weight {:?} gave {}", configured, e
                    );
                }
                prop_assert_eq!(requests.len(), 1, "nothing set after an error");
            }
        }
    }
}

/// What the search found before the fixes, kept as plain cases.
#[test]
fn found_by_the_fuzzer() {
    let state =
        "1\n# be_id be_name srv_id srv_name srv_op_state srv_admin_state srv_uweight srv_iweight\n\
                 1 app 1 web-1 2 0 10 10\n";
    let header = "# pxname,svname,status,qcur,scur";
    let read = |answer: String| status_of(answer.as_bytes(), &["web-1".to_string()]).remove(0);
    let error = |answer: String| match read(answer.clone()) {
        Ok(got) => panic!("read {got:?} from\n{answer}"),
        Err(e) => e.to_string(),
    };

    // Well-formed: 12 sessions (2 queued).
    let good = format!("{state}\n{header}\napp,web-1,UP,2,10\n\n");
    assert_eq!(read(good).unwrap().sessions, Some(12));

    // scur + qcur past u64::MAX: an overflow panic (debug builds) or a
    // wrapped count (release builds).
    let e = error(format!(
        "{state}\n{header}\napp,web-1,UP,1,18446744073709551615\n\n"
    ));
    assert!(e.contains("overflow") && e.contains("web-1"), "{e}");

    // A field too many in a row of either view: the values after it were
    // read under the wrong columns (here uweight 7 for 10).
    let extra = state.replace("1 app 1 web-1 2 0 10 10", "1 app 1 web-1 2 0 7 10 10");
    let e = error(format!("{extra}\n{header}\napp,web-1,UP,2,10\n\n"));
    assert!(e.contains("9 fields, the header 8"), "{e}");
    let e = error(format!("{state}\n{header}\napp,web-1,UP,2,10,x\n\n"));
    assert!(e.contains("6 fields, the header 5"), "{e}");
    // ... or one too few: a row without its scur read as 0 sessions, so a
    // drain would count as done.
    let e = error(format!("{state}\n{header}\napp,web-1,UP,2\n\n"));
    assert!(e.contains("4 fields, the header 5"), "{e}");

    // Cut off inside the last field: "10" read as 1 session.
    let e = error(format!("{state}\n{header}\napp,web-1,UP,0,1"));
    assert!(e.contains("cut off"), "{e}");
}
