//! The fake's answers have the shapes of the docs' sample responses.

use super::*;

#[test]
fn health_service_has_the_documented_shape() {
    let consul = ConsulFake::start();
    consul.register(web_instance("node-1", "10.0.0.1"));
    let r = get(&consul, "/v1/health/service/web");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.header("X-Consul-KnownLeader"), Some("true"));
    assert_eq!(r.header("X-Consul-LastContact"), Some("0"));
    assert!(r.index() > 0);
    let body = r.json();
    // Real Consul sends these too; the sample leaves them out: the Raft
    // indexes of every entry, the service's EnableTagOverride (a filter
    // selector in the same docs page) and a check's Type.
    assert_same_shape(
        "health_service_sample.json",
        &body,
        ENTERPRISE_ONLY,
        &["CreateIndex", "ModifyIndex", "EnableTagOverride", "Type"],
    );
    let entry = &body[0];
    assert_eq!(entry["Node"]["Node"], "node-1");
    assert_eq!(entry["Node"]["Address"], "10.0.0.1");
    assert_eq!(entry["Node"]["Datacenter"], "dc1");
    assert_eq!(entry["Node"]["Meta"]["instance_type"], "t2.medium");
    assert_eq!(entry["Service"]["ID"], "web-node-1");
    assert_eq!(entry["Service"]["Address"], "", "no service address given");
    assert_eq!(entry["Service"]["Port"], 8080);
    assert_eq!(entry["Service"]["Meta"]["version"], "2");
    let checks: Vec<&str> = entry["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["service:web-node-1", "serfHealth"]);
    // An unknown service is an empty list, not an error.
    let r = get(&consul, "/v1/health/service/nope");
    assert_eq!((r.status, r.json()), (200, json!([])));
}

#[test]
fn catalog_service_has_the_documented_shape() {
    let consul = ConsulFake::start();
    let mut web = web_instance("node-1", "10.0.0.1");
    web.address = "172.17.0.3".to_string();
    consul.register(web);
    let r = get(&consul, "/v1/catalog/service/web");
    assert_eq!(r.status, 200);
    // ServiceKind is described on the same docs page ("usually \"\"") and
    // ServiceWeights is a filter selector there; the sample omits both.
    assert_same_shape(
        "catalog_service_sample.json",
        &r.json(),
        ENTERPRISE_ONLY,
        &["ServiceKind", "ServiceWeights"],
    );
    let entry = &r.json()[0];
    assert_eq!(entry["ServiceAddress"], "172.17.0.3");
    assert_eq!(entry["Address"], "10.0.0.1");
    assert_eq!(entry["ServiceTags"], json!(["primary", "v2"]));
}

#[test]
fn kv_and_session_answers_have_the_documented_shapes() {
    let consul = ConsulFake::start();
    let r = put(
        &consul,
        "/v1/session/create",
        br#"{"Name":"test-session","TTL":"30s"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_same_shape("session_create_sample.json", &r.json(), &[], &[]);
    let id = r.json()["ID"].as_str().unwrap().to_string();

    assert!(put_bool(
        &consul,
        &format!("/v1/kv/zip?acquire={id}"),
        b"test"
    ));
    let r = get(&consul, "/v1/kv/zip");
    assert_eq!(r.status, 200);
    assert_same_shape("kv_get_sample.json", &r.json(), &[], &[]);
    let entry = &r.json()[0];
    assert_eq!(entry["Value"], "dGVzdA==", "base64 of \"test\"");
    assert_eq!(entry["Session"], id.as_str());
    assert_eq!(entry["LockIndex"], 1);
    assert_eq!(r.index(), entry["ModifyIndex"].as_u64().unwrap());

    let r = put(&consul, &format!("/v1/session/renew/{id}"), b"");
    assert_eq!(r.status, 200);
    assert_same_shape("session_renew_sample.json", &r.json(), &[], &[]);
    let r = get(&consul, &format!("/v1/session/info/{id}"));
    assert_same_shape("session_info_sample.json", &r.json(), &[], &[]);
    let s = &r.json()[0];
    assert_eq!(s["Name"], "test-session");
    assert_eq!(s["Node"], AGENT_NODE);
    assert_eq!(s["LockDelay"], 15_000_000_000u64, "the default, in ns");
    assert_eq!(s["Behavior"], "release");
    assert_eq!(s["TTL"], "30s");
    assert_eq!(s["NodeChecks"], json!(["serfHealth"]));

    // The docs' keys example: listing "web/" with separator "/".
    for k in ["web/bar", "web/foo", "web/subdir/a", "web/subdir/b"] {
        assert!(put_bool(&consul, &format!("/v1/kv/{k}"), b"x"));
    }
    let r = get(&consul, "/v1/kv/web/?keys&separator=/");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!(["web/bar", "web/foo", "web/subdir/"]));
    assert_eq!(shape(&r.json()), shape(&sample("kv_keys_sample.json")));

    let r = get(&consul, "/v1/status/leader");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!("127.0.0.1:8300"));
    assert!(sample("status_leader_sample.json").is_string());
}
