//! Embedded balancer vs HAProxy: throughput and latency on the same machine,
//! the same 4 demo-app backends (no think time) and the same closed-loop load
//! generator (N keep-alive connections, each sending the next request as soon
//! as the previous answer is read). Prints figures; asserts nothing.
//!
//! Run: `cargo bench -p changeover --bench proxy` (needs haproxy installed).
//! Target (issue 3): embedded ≥ 50 % of HAProxy's throughput.

use changeover_adapters::demo_app::{DemoApp, DemoAppOptions};
use changeover_adapters::lb::embedded::{EmbeddedLb, EmbeddedOptions};
use changeover_core::template::{Template, PLACEHOLDERS};
use changeover_core::unit::{Host, Unit};
use changeover_testkit::haproxy::Haproxy;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 32;
const DURATION: Duration = Duration::from_secs(5);

struct Figures {
    requests: u64,
    errors: u64,
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn one_connection(target: SocketAddr, until: Instant) -> (Vec<Duration>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut buf = vec![0u8; 8192];
    'outer: while Instant::now() < until {
        let Ok(mut s) = TcpStream::connect(target).await else {
            errors += 1;
            continue;
        };
        let _ = s.set_nodelay(true);
        while Instant::now() < until {
            let t0 = Instant::now();
            if s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                .await
                .is_err()
            {
                errors += 1;
                continue 'outer;
            }
            // Read one response: headers, then Content-Length bytes.
            let mut have = 0;
            let complete = loop {
                match s.read(&mut buf[have..]).await {
                    Ok(0) | Err(_) => break false,
                    Ok(n) => have += n,
                }
                let text = &buf[..have];
                if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&text[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if have >= end + 4 + len {
                        break head.starts_with("http/1.1 200");
                    }
                }
            };
            if !complete {
                errors += 1;
                continue 'outer;
            }
            latencies.push(t0.elapsed());
        }
    }
    (latencies, errors)
}

async fn drive(target: SocketAddr) -> Figures {
    let until = Instant::now() + DURATION;
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(one_connection(target, until)))
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Figures {
        requests: all.len() as u64,
        errors,
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn print(name: &str, f: &Figures) {
    println!(
        "{name:<20} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} requests, {} errors)",
        f.rps,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
        f.requests,
        f.errors
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut backends = Vec::new();
        for i in 0..4 {
            let app = DemoApp::bind(DemoAppOptions::new(SocketAddr::from(([127, 0, 0, 1], 0)), format!("v{i}"))).await.unwrap();
            backends.push(app.local_addr().unwrap());
            tokio::spawn(app.run_until(std::future::pending()));
        }
        let units: Vec<Arc<Unit>> = backends
            .iter()
            .enumerate()
            .map(|(i, a)| {
                Arc::new(Unit {
                    index: i,
                    host: Arc::new(Host { name: format!("b{i}"), address: a.ip().to_string(), tags: vec![], ssh_user: None, ssh_port: None, instance_id: None, instances: None }),
                    instance: 1,
                    port: Some(a.port()),
                })
            })
            .collect();
        let embedded = EmbeddedLb::start(EmbeddedOptions::default(), Template::parse("{address}:{port}", PLACEHOLDERS).unwrap(), &units).await.unwrap();
        let mut builder = Haproxy::builder().backend("app");
        for (i, a) in backends.iter().enumerate() {
            builder = builder.server(&format!("b{i}"), &a.to_string());
        }
        let haproxy = builder.start();

        println!("{CONNECTIONS} keep-alive connections, closed loop, {}s each, 4 backends, 2 cores shared by everything", DURATION.as_secs());
        // Warm up both, then measure HAProxy first and the embedded one second.
        let _ = drive_short(haproxy.frontend_addr()).await;
        let _ = drive_short(embedded.local_addr()).await;
        let h = drive(haproxy.frontend_addr()).await;
        print("haproxy", &h);
        let e = drive(embedded.local_addr()).await;
        print("embedded", &e);
        println!("embedded / haproxy throughput: {:.2}", e.rps / h.rps);
    });
}

async fn drive_short(target: SocketAddr) -> u64 {
    let until = Instant::now() + Duration::from_millis(500);
    one_connection(target, until).await.0.len() as u64
}
