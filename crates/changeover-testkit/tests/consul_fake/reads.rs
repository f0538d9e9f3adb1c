//! Reads: blocking queries, health filters, ACL tokens, datacenter, outage, shutdown.

use super::*;

// ------------------------------------------------------ blocking queries

#[test]
fn a_blocking_query_returns_early_on_a_change() {
    let consul = ConsulFake::start();
    assert!(put_bool(&consul, "/v1/kv/watched", b"old"));
    let idx = get(&consul, "/v1/kv/watched").index();
    let port = consul.port();
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let req = "PUT /v1/kv/watched HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nnew";
        s.write_all(req.as_bytes()).unwrap();
        let mut sink = Vec::new();
        s.read_to_end(&mut sink).unwrap();
    });
    let start = Instant::now();
    let r = get(&consul, &format!("/v1/kv/watched?index={idx}&wait=60s"));
    let took = start.elapsed();
    writer.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.index() > idx);
    assert_eq!(r.json()[0]["Value"], "bmV3", "base64 of \"new\"");
    assert!(
        took >= Duration::from_millis(250),
        "did not block: {took:?}"
    );
    assert!(
        took < Duration::from_secs(20),
        "not woken by the write: {took:?}"
    );

    // The same for health, woken by a status change made in-process.
    let consul = ConsulFake::start();
    consul.register(ServiceInstance::new("n1", "10.0.0.1", "api"));
    let idx = get(&consul, "/v1/health/service/api").index();
    let c = &consul;
    thread::scope(|scope| {
        scope.spawn(|| {
            thread::sleep(Duration::from_millis(200));
            c.set_status("api-n1", CheckStatus::Warning);
        });
        let r = get(c, &format!("/v1/health/service/api?index={idx}&wait=60s"));
        assert!(r.index() > idx);
        assert_eq!(r.json()[0]["Checks"][0]["Status"], "warning");
    });
}

#[test]
fn a_blocking_query_answers_after_wait_when_nothing_changes() {
    let consul = ConsulFake::start();
    assert!(put_bool(&consul, "/v1/kv/still", b"same"));
    let first = get(&consul, "/v1/kv/still");
    let idx = first.index();
    let c = &consul;
    thread::scope(|scope| {
        // A write elsewhere wakes the query, which finds its own index
        // unchanged and goes on waiting.
        scope.spawn(|| {
            thread::sleep(Duration::from_millis(100));
            assert!(put_bool(c, "/v1/kv/elsewhere", b"x"));
        });
        let start = Instant::now();
        let r = get(c, &format!("/v1/kv/still?index={idx}&wait=600ms"));
        let took = start.elapsed();
        assert_eq!(r.status, 200);
        assert_eq!(r.index(), idx);
        assert_eq!(r.json(), first.json());
        assert!(
            took >= Duration::from_millis(580),
            "returned early: {took:?}"
        );
        assert!(
            took < Duration::from_secs(10),
            "waited far too long: {took:?}"
        );
    });
    // Without ?index nothing blocks; a bad wait is Consul's 400.
    let start = Instant::now();
    get(&consul, "/v1/kv/still?wait=10s");
    assert!(start.elapsed() < Duration::from_secs(5));
    let r = get(&consul, "/v1/kv/still?index=1&wait=soon");
    assert_eq!((r.status, r.text()), (400, "Invalid wait time".to_string()));
}

// ---------------------------------------------------------------- health

#[test]
fn passing_filters_out_critical_and_warning_instances() {
    let consul = ConsulFake::start();
    for node in ["n1", "n2", "n3"] {
        consul.register(ServiceInstance::new(node, "10.0.0.1", "web"));
    }
    let before = get(&consul, "/v1/health/service/web").index();
    consul.set_status("web-n2", CheckStatus::Critical);
    consul.set_status("web-n3", CheckStatus::Warning);
    let ids = |target: &str| -> Vec<String> {
        get(&consul, target)
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["Service"]["ID"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids("/v1/health/service/web"),
        ["web-n1", "web-n2", "web-n3"]
    );
    assert_eq!(ids("/v1/health/service/web?passing"), ["web-n1"]);
    assert_eq!(ids("/v1/health/service/web?passing=true"), ["web-n1"]);
    assert_eq!(ids("/v1/health/service/web?passing=false").len(), 3);
    assert!(get(&consul, "/v1/health/service/web").index() > before);

    consul.deregister("web-n1");
    assert_eq!(
        get(&consul, "/v1/health/service/web?passing").json(),
        json!([])
    );
    let catalog = get(&consul, "/v1/catalog/service/web?passing").json();
    assert_eq!(
        catalog.as_array().unwrap().len(),
        2,
        "the catalog has no ?passing"
    );
}

#[test]
fn tag_filtering_needs_every_tag() {
    let consul = ConsulFake::start();
    let mut a = ServiceInstance::new("n1", "10.0.0.1", "web");
    a.tags = vec!["blue".into(), "canary".into()];
    let mut b = ServiceInstance::new("n2", "10.0.0.2", "web");
    b.tags = vec!["blue".into()];
    consul.register(a);
    consul.register(b);
    let count = |target: &str| get(&consul, target).json().as_array().unwrap().len();
    assert_eq!(count("/v1/health/service/web?tag=blue"), 2);
    assert_eq!(count("/v1/health/service/web?tag=blue&tag=canary"), 1);
    assert_eq!(count("/v1/health/service/web?tag=green"), 0);
    assert_eq!(count("/v1/catalog/service/web?tag=canary"), 1);
    assert_eq!(count("/v1/health/service/web?node-meta=none:x"), 0);
    assert_eq!(get(&consul, "/v1/health/service/web?filter=x").status, 400);
}

// ------------------------------------------------------- ACL, dc, outage

#[test]
fn the_acl_token_is_needed_and_taken_three_ways() {
    let consul = ConsulFake::builder().acl_token("s3cret").start();
    consul.register(ServiceInstance::new("n1", "10.0.0.1", "web"));
    let token = [("X-Consul-Token", "s3cret")];
    let r = call(&consul, "PUT", "/v1/kv/secret", &token, b"v");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Consul-Default-ACL-Policy"), Some("deny"));

    let r = get(&consul, "/v1/kv/secret");
    assert_eq!(r.status, 403);
    assert!(r.text().starts_with("Permission denied"), "{}", r.text());
    assert_eq!(put(&consul, "/v1/kv/secret", b"x").status, 403);
    assert_eq!(put(&consul, "/v1/session/create", b"").status, 403);
    assert_eq!(consul.kv("secret").unwrap().value, b"v");

    assert_eq!(
        call(&consul, "GET", "/v1/kv/secret", &token, b"").status,
        200
    );
    let bearer = [("Authorization", "Bearer s3cret")];
    assert_eq!(
        call(&consul, "GET", "/v1/kv/secret", &bearer, b"").status,
        200
    );
    assert_eq!(get(&consul, "/v1/kv/secret?token=s3cret").status, 200);

    let wrong = [("X-Consul-Token", "nope")];
    let r = call(&consul, "GET", "/v1/kv/secret", &wrong, b"");
    assert_eq!((r.status, r.text()), (403, "ACL not found".to_string()));
    let r = call(&consul, "GET", "/v1/health/service/web", &wrong, b"");
    assert_eq!(r.status, 403);

    // The anonymous token's list reads are filtered, not refused.
    let r = get(&consul, "/v1/health/service/web");
    assert_eq!((r.status, r.json()), (200, json!([])));
    let r = call(&consul, "GET", "/v1/health/service/web", &token, b"");
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    assert_eq!(get(&consul, "/v1/kv/?recurse").status, 404);
    assert_eq!(
        get(&consul, "/v1/status/leader").status,
        200,
        "no token needed"
    );

    let log = consul.requests();
    let flags: Vec<bool> = log.iter().map(|r| r.had_token).collect();
    assert_eq!(
        flags,
        [true, false, false, false, true, true, true, false, false, false, true, false, false]
    );
    let by_query = log.iter().find(|r| r.query.contains("token")).unwrap();
    assert_eq!(by_query.query, "token=<hidden>");
    assert!(
        log.iter().all(|r| !format!("{r:?}").contains("s3cret")),
        "the token is never logged"
    );
}

#[test]
fn another_datacenter_has_no_path() {
    let consul = ConsulFake::builder().datacenter("east").start();
    consul.register(ServiceInstance::new("n1", "10.0.0.1", "web"));
    let r = get(&consul, "/v1/health/service/web?dc=dc1");
    assert_eq!(
        (r.status, r.text()),
        (500, "No path to datacenter".to_string())
    );
    let r = put(&consul, "/v1/kv/k?dc=west", b"");
    assert_eq!(r.status, 500);
    assert!(consul.kv_keys().is_empty());
    let r = get(&consul, "/v1/health/service/web?dc=east");
    assert_eq!(r.json()[0]["Node"]["Datacenter"], "east");
}

#[test]
fn an_outage_answers_no_cluster_leader() {
    let consul = ConsulFake::start();
    assert!(put_bool(&consul, "/v1/kv/k", b"before"));
    consul.set_outage(true);
    for r in [
        get(&consul, "/v1/kv/k"),
        put(&consul, "/v1/kv/k", b"during"),
        get(&consul, "/v1/health/service/web"),
        put(&consul, "/v1/session/create", b""),
    ] {
        assert_eq!(
            (r.status, r.text()),
            (500, "rpc error making call: No cluster leader".to_string())
        );
    }
    let r = get(&consul, "/v1/status/leader");
    assert_eq!((r.status, r.json()), (200, json!("")), "no leader to name");
    consul.set_outage(false);
    assert_eq!(consul.kv("k").unwrap().value, b"before");
    assert_eq!(get(&consul, "/v1/kv/k").status, 200);
    assert_eq!(
        get(&consul, "/v1/status/leader").json(),
        json!("127.0.0.1:8300")
    );
}

#[test]
fn unknown_paths_are_404_and_dropping_stops_the_server() {
    let consul = ConsulFake::start();
    assert!(consul.address().starts_with("http://127.0.0.1:"));
    assert_eq!(
        consul.address(),
        format!("http://127.0.0.1:{}", consul.port())
    );
    let r = get(&consul, "/v1/agent/self");
    assert_eq!(r.status, 404);
    assert_eq!(consul.requests().last().unwrap().path, "/v1/agent/self");
    let port = consul.port();
    drop(consul);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still listening after drop"
    );
}
