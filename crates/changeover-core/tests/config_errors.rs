//! Bad configs are rejected with file, line, column and a hint (invariant 7).
//! Snapshots of the rendered diagnostics, so a regression in wording or
//! location shows up in review.

use changeover_core::config;
use miette::{GraphicalReportHandler, GraphicalTheme};
use std::path::Path;

const GOOD: &str = r#"app = "shop"

[ssh]
user = "deploy"
max_connections = 64

[[hosts]]
name = "web-1"
address = "10.0.10.1"
tags = ["production"]

[[hosts]]
name = "web-2"
address = "10.0.10.2"
tags = ["production", "canary"]

[[load_balancers]]
kind = "haproxy"
scope = "global"
socket = "/run/haproxy/admin.sock"
backend = "app"
server = "{host}"
method = "state"

[drain]
mode = "lb"
timeout = "30s"
on_timeout = "fail"

[deploy]
run = "sudo /opt/shop/bin/switch {version}"
timeout = "5m"

[health]
http = "http://{address}:8080/health"
expect_status = 200
interval = "500ms"
timeout = "2s"
healthy_threshold = 2
deadline = "60s"

[strategy]
batch = "25%"
max_failures = 0

[targets.canary]
tags = ["canary"]
require_message = true

[targets.production10]
tags = ["production"]
percent = 10
partial = true
"#;

fn render(text: &str) -> String {
    let err = match config::parse("changeover.toml", text, Path::new(".")) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e,
    };
    let mut out = String::new();
    for e in &err.errors {
        out.push_str(&format!("@ {}\n", e.location));
    }
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, &err)
        .unwrap();
    out
}

fn bad(find: &str, replace: &str) -> String {
    assert!(GOOD.contains(find), "fixture lacks {find:?}");
    GOOD.replacen(find, replace, 1)
}

#[test]
fn spec_example_is_valid() {
    let loaded = config::parse("changeover.toml", GOOD, Path::new(".")).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.plan.units().len(), 2);
}

#[test]
fn unknown_key_is_a_warning_with_its_line() {
    let loaded = config::parse(
        "changeover.toml",
        &bad("backend = \"app\"", "backend = \"app\"\nsokcet = \"x\""),
        Path::new("."),
    )
    .unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    let w = &loaded.warnings[0];
    assert_eq!(w.location, "changeover.toml:22:1");
    assert!(
        w.message.contains("load_balancers.0.sokcet"),
        "{}",
        w.message
    );
}

macro_rules! snap {
    ($name:ident, $find:expr, $replace:expr) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(render(&bad($find, $replace)));
        }
    };
}

snap!(
    wrong_type,
    "max_connections = 64",
    "max_connections = \"many\""
);
snap!(unknown_kind, "kind = \"haproxy\"", "kind = \"haproxyy\"");
snap!(
    bad_duration,
    "timeout = \"30s\"",
    "timeout = \"30 parsecs\""
);
snap!(batch_zero, "batch = \"25%\"", "batch = 0");
snap!(batch_zero_percent, "batch = \"25%\"", "batch = \"0%\"");
snap!(batch_over_100, "batch = \"25%\"", "batch = \"150%\"");
snap!(empty_ramp, "batch = \"25%\"", "batch = []");
snap!(unknown_placeholder, "switch {version}", "switch {verison}");
snap!(duplicate_host_name, "name = \"web-2\"", "name = \"web-1\"");
snap!(
    duplicate_address,
    "address = \"10.0.10.2\"",
    "address = \"10.0.10.1\""
);
snap!(missing_address, "address = \"10.0.10.2\"\n", "");
snap!(
    bad_on_timeout,
    "on_timeout = \"fail\"",
    "on_timeout = \"retry\""
);
snap!(toml_syntax, "[strategy]", "[strategy");

#[test]
fn several_problems_are_reported_together() {
    let text =
        bad("batch = \"25%\"", "batch = 0").replace("timeout = \"30s\"", "timeout = \"soon\"");
    let out = render(&text);
    assert!(out.contains("changeover.toml:27:11"), "{out}");
    assert!(out.contains("changeover.toml:43:9"), "{out}");
}

#[test]
fn embedded_balancer_and_witness_are_accepted() {
    let text = GOOD
        .replace("kind = \"haproxy\"", "kind = \"embedded\"\nlisten = \"127.0.0.1:8000\"\nmember = \"{address}:8080\"\ncheck_path = \"/health\"")
        .replace("socket = \"/run/haproxy/admin.sock\"\nbackend = \"app\"\nserver = \"{host}\"\nmethod = \"state\"\n", "")
        + "\n[witness]\nurl = \"http://127.0.0.1:8000/\"\nrps = 50\nabort_after_failures = 3\n";
    let loaded = config::parse("changeover.toml", &text, Path::new(".")).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let w = loaded.plan.witness.unwrap();
    assert_eq!((w.rps, w.abort_after_failures), (50, Some(3)));
}

#[test]
fn witness_url_must_be_http_and_is_redacted() {
    let out = render(
        &(GOOD.to_string()
            + "\n[witness]\nurl = \"https://user:secret@shop.example/health?token=abc\"\n"),
    );
    assert!(out.contains("https://shop.example/health"), "{out}");
    assert!(!out.contains("secret") || out.contains("url = "), "{out}");
    assert!(
        !out.lines()
            .any(|l| l.contains("× ") && (l.contains("token=abc") || l.contains("user:secret"))),
        "{out}"
    );
}

snap!(
    port_without_first_port,
    "http = \"http://{address}:8080/health\"",
    "http = \"http://{address}:{port}/health\""
);

/// The front-end tier config from issue 4, as written: HAProxy beside the
/// app on every host, three instances, weights, groups of 35 %.
const FRONT_TIER: &str = r#"app = "front"

[[hosts]]
name = "fe-1"
address = "10.0.20.1"

[[hosts]]
name = "fe-2"
address = "10.0.20.2"

[instances]
count = 3
first_port = 8081          # instance k listens on first_port + k - 1: {port}

[[load_balancers]]
kind = "haproxy"
scope = "host"             # the socket is on each host, used over SSH
socket = "/run/haproxy/admin.sock"
backend = "pxapp"
server = "pxApp_{instance}"
method = "weight"          # weight 0, then back to the weight it had before

[deploy]
run = "docker restart app-{instance}"

[health]
http = "http://{address}:{port}/health"

[strategy]
groups = "35%"             # group size = max(1, floor(35 % of hosts))
"#;

#[test]
fn front_tier_config_works_as_written() {
    let loaded = config::parse("changeover.toml", FRONT_TIER, Path::new(".")).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.plan.units().len(), 6);
    let with_command = FRONT_TIER.replace(
        "socket = \"/run/haproxy/admin.sock\"",
        "socket_command = \"docker exec -i haproxy socat stdio /var/run/haproxy.sock\"",
    );
    let loaded = config::parse("changeover.toml", &with_command, Path::new(".")).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let gated = FRONT_TIER.replace(
        "groups = \"35%\"             # group size = max(1, floor(35 % of hosts))",
        "window = \"10%\"\nwait_for_all_healthy = true\ngate_timeout = \"2m\"",
    ) + "\n[drain]\nmode = \"host\"\nlocal_address = \"{address}\"\n";
    let loaded = config::parse("changeover.toml", &gated, Path::new(".")).unwrap();
    assert!(loaded.plan.strategy.wait_for_all_healthy);
    assert_eq!(loaded.plan.strategy.gate_timeout.as_secs(), 120);
}

/// Each bad combination is refused with its key's line and a hint.
#[test]
fn front_tier_mistakes_are_refused_with_a_hint() {
    let cases = [
        (
            FRONT_TIER.replace("groups = \"35%\"", "groups = \"35%\"\nbatch = 2"),
            "both groups and batch are set",
        ),
        (
            FRONT_TIER.replace(
                "socket = \"/run/haproxy/admin.sock\"",
                "socket = \"/run/haproxy/admin.sock\"\nsocket_command = \"socat stdio /x\"",
            ),
            "both socket and socket_command are set",
        ),
        (
            FRONT_TIER.replace(
                "socket = \"/run/haproxy/admin.sock\"",
                "socket = \"admin.sock\"",
            ),
            "is not an absolute socket path",
        ),
        (
            FRONT_TIER.replace(
                "socket = \"/run/haproxy/admin.sock\"",
                "socket_command = \"socat stdio /run/haproxy-{instance}.sock\"",
            ),
            "{instance} cannot be used in socket_command",
        ),
        (
            FRONT_TIER.replace("kind = \"haproxy\"", "kind = \"embedded\""),
            "scope = \"host\" is not available for kind `embedded`",
        ),
        (
            FRONT_TIER.replace("[health]\nhttp = \"http://{address}:{port}/health\"\n", "")
                + "\nwait_for_all_healthy = true\n",
            "wait_for_all_healthy needs a health check",
        ),
        (
            FRONT_TIER.to_string() + "\n[drain]\nmode = \"lb\"\nlocal_address = \"{address}\"\n",
            "drain.local_address applies to mode = \"host\" only",
        ),
        (
            FRONT_TIER
                .replace("first_port = 8081", "")
                .replace("{port}", "8081")
                + "\n[drain]\nmode = \"host\"\n",
            "drain mode \"host\" counts connections to the unit's port",
        ),
    ];
    for (text, want) in cases {
        let text = render(&text);
        assert!(text.contains(want), "want `{want}` in:\n{text}");
        assert!(text.contains("changeover.toml:"), "names the line:\n{text}");
        assert!(text.contains("help:"), "has a hint:\n{text}");
    }
}

const HAPROXY_LB: &str = "kind = \"haproxy\"\nscope = \"global\"\nsocket = \"/run/haproxy/admin.sock\"\nbackend = \"app\"\nserver = \"{host}\"\nmethod = \"state\"\n";

fn messages(text: &str) -> String {
    match config::parse("changeover.toml", text, Path::new(".")) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e
            .errors
            .iter()
            .map(|e| format!("{} {} ({:?})", e.location, e.message, e.help))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[test]
fn rackspace_balancer_config_works_as_written() {
    let text = bad(
        HAPROXY_LB,
        "kind = \"rackspace\"\nload_balancer_id = 1234\nregion = \"ord\"\nmember = \"{address}:8080\"\n",
    )
    .replace("mode = \"lb\"", "mode = \"fixed\"");
    let loaded = config::parse("changeover.toml", &text, Path::new(".")).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let lb = &loaded.plan.load_balancers[0];
    assert_eq!(lb.kind_name(), "rackspace");
    let changeover_core::plan::LbKind::Rackspace(r) = &lb.kind else {
        panic!("{lb:?}")
    };
    assert_eq!(r.load_balancer_id, 1234);
    assert_eq!(r.region, "ORD");
    assert_eq!(
        r.identity_url,
        "https://identity.api.rackspacecloud.com/v2.0"
    );
    assert_eq!(
        (r.username_env.as_str(), r.api_key_env.as_str()),
        ("RAX_USERNAME", "RAX_API_KEY")
    );
    // Rackspace counts no sessions: the drain defaults to a pause.
    let text = bad(
        HAPROXY_LB,
        "kind = \"rackspace\"\nload_balancer_id = 1\nregion = \"DFW\"\n",
    )
    .replace("mode = \"lb\"\n", "");
    let loaded = config::parse("changeover.toml", &text, Path::new(".")).unwrap();
    assert!(matches!(
        loaded.plan.drain.mode,
        changeover_core::plan::DrainMode::Fixed
    ));
}

#[test]
fn rackspace_mistakes_are_refused_with_a_hint() {
    let m = messages(&bad(HAPROXY_LB, "kind = \"rackspace\"\nregion = \"ORD\"\n"));
    assert!(m.contains("without `load_balancer_id`"), "{m}");
    let m = messages(&bad(
        HAPROXY_LB,
        "kind = \"rackspace\"\nload_balancer_id = -3\nsocket = \"/x\"\napi_key_env = \"sk-1234-secret\"\nidentity_url = \"https://u:p@id.example/v2.0\"\n",
    ));
    assert!(m.contains("load_balancer_id is not a balancer id"), "{m}");
    assert!(m.contains("without `region`"), "{m}");
    assert!(
        m.contains("`socket` does not apply to kind `rackspace`"),
        "{m}"
    );
    assert!(m.contains("is not an environment variable name"), "{m}");
    assert!(m.contains("identity_url carries credentials"), "{m}");
    // With drain mode "lb" nothing could count the sessions.
    let m = messages(&bad(
        HAPROXY_LB,
        "kind = \"rackspace\"\nload_balancer_id = 5\nregion = \"ORD\"\n",
    ));
    assert!(
        m.contains("drain mode \"lb\" needs a balancer that counts sessions"),
        "{m}"
    );
    // Rackspace's keys on another kind are refused too, not ignored.
    let m = messages(&bad(
        "method = \"state\"\n",
        "method = \"state\"\nregion = \"ORD\"\n",
    ));
    assert!(
        m.contains("`region` does not apply to kind `haproxy`"),
        "{m}"
    );
    // The cloud kinds not built yet say so.
    for kind in ["elbv2", "elb", "octavia"] {
        let m = messages(&bad("kind = \"haproxy\"", &format!("kind = \"{kind}\"")));
        assert!(
            m.contains("is not available in this version"),
            "{kind}: {m}"
        );
    }
}
