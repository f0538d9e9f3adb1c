//! These check the Consul FAKE (`changeover_testkit::consul`) against
//! Consul's documented HTTP API, not against a real Consul (none can be
//! installed here).
//!
//! `tests/data/consul/*.json` are the sample responses of Consul's HTTP API
//! documentation, reproduced as data: `health_service_sample.json` (Health,
//! "List Service Instances for Service"), `catalog_service_sample.json`
//! (Catalog, "List Nodes for Service"), `kv_get_sample.json` and
//! `kv_keys_sample.json` (KV Store, "Read Key"), `session_create_sample.json`,
//! `session_info_sample.json` and `session_renew_sample.json` (Session) and
//! `status_leader_sample.json` (Status). The shape tests assert that the
//! fake's answers have the same keys at every level as those samples (values
//! differ), less two explicit lists per sample: Enterprise-only keys the fake
//! does not send, and keys the fake sends that the sample leaves out but real
//! Consul sends (each named with the reason). The other tests are behaviour
//! from the docs: CAS, locks, sessions and their TTL, lock delay, blocking
//! queries, health filters, ACL tokens, datacenter, outage.
//!
//! The client is a tiny blocking HTTP/1.1 one over `std::net::TcpStream`
//! (`Connection: close`), so the fake is exercised over real TCP as another
//! process would.

mod kv;
mod reads;
mod sessions;
mod shapes;
mod txn;

use changeover_testkit::consul::{CheckStatus, ConsulFake, ServiceInstance, AGENT_NODE};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- client

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    fn index(&self) -> u64 {
        self.header("X-Consul-Index")
            .unwrap_or_else(|| panic!("no X-Consul-Index in {:?}", self.headers))
            .parse()
            .expect("a numeric index")
    }
}

fn call(
    consul: &ConsulFake,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", consul.port())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
        consul.port(),
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap().trim(), 16)
            .expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

fn get(c: &ConsulFake, target: &str) -> Reply {
    call(c, "GET", target, &[], b"")
}

fn put(c: &ConsulFake, target: &str, body: &[u8]) -> Reply {
    call(c, "PUT", target, &[], body)
}

fn delete(c: &ConsulFake, target: &str) -> Reply {
    call(c, "DELETE", target, &[], b"")
}

/// `PUT` that must answer 200 with a JSON boolean; returns it.
fn put_bool(c: &ConsulFake, target: &str, body: &[u8]) -> bool {
    let r = put(c, target, body);
    assert_eq!(r.status, 200, "PUT {target}: {}", r.text());
    r.json().as_bool().expect("a JSON boolean")
}

fn create_session(c: &ConsulFake, body: Value) -> String {
    let r = put(c, "/v1/session/create", body.to_string().as_bytes());
    assert_eq!(r.status, 200, "session create: {}", r.text());
    r.json()["ID"].as_str().expect("an ID").to_string()
}

/// Polls (every 20 ms, at most `limit`) until `done` holds.
fn eventually(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

// ----------------------------------------------------------------- shape

fn sample(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/consul")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// Maps whose keys are the user's data, not the schema.
const DATA_MAPS: &[&str] = &["Meta", "NodeMeta", "ServiceMeta"];

/// Every key path in `v` ("[].Node.ID"), array elements merged.
fn shape(v: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, path: &str, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                let last = path.rsplit('.').next().unwrap_or("");
                if DATA_MAPS.contains(&last) {
                    return;
                }
                for (k, child) in map {
                    let p = format!("{path}.{k}");
                    out.insert(p.clone());
                    walk(child, &p, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    walk(item, &format!("{path}[]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(v, "", &mut out);
    out
}

fn without(paths: BTreeSet<String>, names: &[&str]) -> BTreeSet<String> {
    paths
        .into_iter()
        .filter(|p| {
            !p.split('.')
                .any(|seg| names.contains(&seg.trim_end_matches("[]")))
        })
        .collect()
}

fn assert_same_shape(file: &str, fake: &Value, enterprise_only: &[&str], fake_extra: &[&str]) {
    let want = without(shape(&sample(file)), enterprise_only);
    let got = without(shape(fake), fake_extra);
    assert!(!want.is_empty(), "{file}: an empty sample");
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{file}: the fake lacks {missing:?} and adds {extra:?}\nfake: {fake:#}"
    );
}

/// `Namespace` (and `Partition`) are Consul Enterprise's; the community
/// edition, which the fake stands for, does not send them.
const ENTERPRISE_ONLY: &[&str] = &["Namespace", "Partition"];

fn web_instance(node: &str, addr: &str) -> ServiceInstance {
    let mut i = ServiceInstance::new(node, addr, "web");
    i.port = 8080;
    i.tags = vec!["primary".to_string(), "v2".to_string()];
    i.meta.insert("version".to_string(), "2".to_string());
    i.node_meta
        .insert("instance_type".to_string(), "t2.medium".to_string());
    i
}
