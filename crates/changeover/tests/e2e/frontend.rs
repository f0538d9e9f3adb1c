//! End-to-end, the front-end tier (issue 4, part A): every host runs its own
//! HAProxy in front of 3 demo-app instances, a global HAProxy is in front
//! of the hosts, and changeover reaches each host's HAProxy over SSH at one
//! path that shows a different HAProxy on every host (the testkit's
//! [`FrontTier`]: one mount namespace per host). Load goes through the
//! global HAProxy during the whole rollout.

use crate::fleet::{changeover, http_get, AppCtl};
use crate::text;
use changeover_testkit::frontfleet::{server_name, FrontTier, OutReport, BACKEND, GLOBAL_BACKEND};
use changeover_testkit::haproxy;
use changeover_testkit::load::{LoadGen, LoadOptions, LoadReport};
use changeover_testkit::tools;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const INSTANCES: usize = 3;
/// Long enough that a restarted instance is visibly down for a while (a
/// take-out that came too late would drop requests), short enough for a
/// rollout of 18 units well under a minute.
const BOOT_TIME: &str = "300ms";

/// How changeover reaches each host's HAProxy.
#[derive(Debug, Clone, Copy)]
enum Access {
    /// `socket = "<path>"`: the socket on the host, e.g. by unix-socket
    /// forwarding over the SSH connection.
    Socket,
    /// `socket_command = "socat stdio UNIX-CONNECT:<path>"`: a command run on
    /// the host whose stdin/stdout is the runtime API.
    Command,
    /// `Socket`, with the global HAProxy configured too, listed first: it
    /// takes the unit's whole host out before the host's HAProxy takes the
    /// instance out.
    SocketAndGlobal,
    /// Not at all (`kind = "none"`, no drain): the same restarts without
    /// take-out, for the twin test that must see failures.
    NoTakeOut,
}

/// A [`FrontTier`] with the demo app (v1) on every instance, restarted by
/// `app-ctl.sh` over SSH; every instance is killed on drop.
struct FrontFleet {
    tier: FrontTier,
    ctl: AppCtl,
    apps: PathBuf,
}

impl FrontFleet {
    /// `hosts` hosts × 3 instances, every one on v1 and UP in both layers
    /// of HAProxy; `weight` for every per-host server (default HAProxy's 1).
    fn start(hosts: usize, weight: Option<u32>) -> FrontFleet {
        let mut builder = FrontTier::builder(hosts).instances(INSTANCES);
        if let Some(w) = weight {
            builder = builder.weight(w);
        }
        let tier = builder.start();
        let ctl = AppCtl::install(tier.dir(), BOOT_TIME);
        let apps = tier.dir().join("apps");
        // Built before any app starts, so that a failure below still kills
        // those already started.
        let fleet = FrontFleet { tier, ctl, apps };
        for (i, k) in fleet.units() {
            let dir = fleet.app_dir(i, k);
            std::fs::create_dir_all(&dir).unwrap();
            let listen = fleet.tier.instance_addr(i, k).to_string();
            fleet.ctl.start(&dir, &listen, "v1");
        }
        fleet.tier.wait_all_up(Duration::from_secs(30));
        fleet
    }

    /// Every (host index, instance) in the product's unit order.
    fn units(&self) -> Vec<(usize, usize)> {
        (0..self.tier.hosts().len())
            .flat_map(|i| (1..=INSTANCES).map(move |k| (i, k)))
            .collect()
    }

    /// Instance `k`'s state directory on host `i`: `apps/web-N/k`, which
    /// the deploy step names as `apps/{host}/{instance}`.
    fn app_dir(&self, i: usize, k: usize) -> PathBuf {
        self.apps
            .join(&self.tier.hosts()[i].name)
            .join(k.to_string())
    }

    /// Write a changeover.toml for this fleet. `extra` is appended after
    /// `[strategy]` (keys without a table header land there).
    fn config(&self, access: Access, extra: &str) -> PathBuf {
        let mut s = format!(
            "app = \"front\"\nstate_dir = \"state\"\n\n\
             [ssh]\nconfig_file = \"{}\"\nmax_connections = 8\nconnect_timeout = \"5s\"\n\n",
            self.tier.ssh().ssh_config_path().display()
        );
        for host in self.tier.hosts() {
            s.push_str(&format!(
                "[[hosts]]\nname = \"{}\"\naddress = \"{}\"\n\n",
                host.name, host.address
            ));
        }
        let socket = self.tier.shared_socket().display();
        let haproxy = |reach: String| {
            format!(
                "[[load_balancers]]\nkind = \"haproxy\"\nscope = \"host\"\n{reach}\n\
                 backend = \"{BACKEND}\"\nserver = \"pxApp_{{instance}}\"\nmethod = \"weight\"\n\n\
                 [drain]\nmode = \"lb\"\ntimeout = \"10s\"\n"
            )
        };
        let balancer = match access {
            Access::Socket => haproxy(format!("socket = \"{socket}\"")),
            Access::SocketAndGlobal => format!(
                "[[load_balancers]]\nkind = \"haproxy\"\nsocket = \"{}\"\nbackend = \"{GLOBAL_BACKEND}\"\nserver = \"{{host}}\"\n\n{}",
                self.tier.global().socket_path().display(),
                haproxy(format!("socket = \"{socket}\""))
            ),
            Access::Command => haproxy(format!(
                "socket_command = \"socat stdio UNIX-CONNECT:{socket}\""
            )),
            Access::NoTakeOut => "[[load_balancers]]\nkind = \"none\"\n\n\
                                  [drain]\nmode = \"fixed\"\ntimeout = \"0s\"\n"
                .to_string(),
        };
        s.push_str(&format!(
            "[instances]\ncount = {INSTANCES}\nfirst_port = {first_port}\n\n\
             {balancer}\n\
             [deploy]\nrun = \"{run}\"\ntimeout = \"30s\"\n\n\
             [health]\nhttp = \"http://{{address}}:{{port}}/health\"\ninterval = \"100ms\"\n\
             timeout = \"1s\"\nhealthy_threshold = 2\ndeadline = \"10s\"\n\n\
             [strategy]\ngroups = \"35%\"\n{extra}",
            first_port = self.tier.first_port(),
            run = self.ctl.run_step(
                &format!("{}/{{host}}/{{instance}}", self.apps.display()),
                "{address}:{port}"
            ),
        ));
        let path = self.tier.dir().join("changeover.toml");
        std::fs::write(&path, s).unwrap();
        path
    }

    /// What every instance answers on `GET /`, asked directly, in unit order.
    fn versions(&self) -> Vec<String> {
        self.units()
            .into_iter()
            .map(|(i, k)| {
                http_get(self.tier.instance_addr(i, k), "/").unwrap_or_else(|e| format!("<{e}>"))
            })
            .collect()
    }

    /// `web-N/pxApp_k` → (show stat status, srv_uweight), for every unit.
    fn lb_states(&self) -> BTreeMap<String, (String, u32)> {
        let mut states = BTreeMap::new();
        for (i, host) in self.tier.hosts().iter().enumerate() {
            let lb = self.tier.host_lb(i);
            for k in 1..=INSTANCES {
                let name = server_name(k);
                states.insert(
                    format!("{}/{name}", host.name),
                    (lb.server(&name).status, lb.user_weight(&name)),
                );
            }
        }
        states
    }
}

impl Drop for FrontFleet {
    fn drop(&mut self) {
        for (i, k) in self.units() {
            AppCtl::kill(&self.app_dir(i, k));
        }
    }
}

fn load(target: SocketAddr, new_connection_per_request: bool) -> LoadGen {
    let mut opts = LoadOptions::new(target);
    opts.rps = 50;
    opts.new_connection_per_request = new_connection_per_request;
    opts.request_timeout = Duration::from_secs(5);
    // Bounds only: the rollout stops the generators long before.
    opts.max_duration = Duration::from_secs(120);
    opts.max_requests = 6_000;
    LoadGen::start(opts)
}

struct Rollout {
    out: Output,
    /// A new connection per request, and keep-alive connections: both kinds
    /// of client must get through a rollout.
    fresh: LoadReport,
    keep_alive: LoadReport,
    sampled: OutReport,
}

/// `deploy --version v2` with steady load through the global HAProxy and
/// every host's HAProxy sampled, from before the first take-out to after
/// the last put-back.
async fn rollout_under_load(fleet: &FrontFleet, config: &Path) -> Rollout {
    let target = fleet.tier.global().frontend_addr();
    let fresh = load(target, true);
    let keep_alive = load(target, false);
    let sampler = fleet.tier.sampler();
    tokio::task::block_in_place(|| sampler.wait_samples(2, Duration::from_secs(10)));
    let config = config.to_path_buf();
    let out =
        tokio::task::spawn_blocking(move || changeover(&config, &["deploy", "--version", "v2"]))
            .await
            .unwrap();
    // Traffic and sampling go on a little past the end: a unit put back in
    // a bad state would show here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Rollout {
        out,
        fresh: fresh.stop().await,
        keep_alive: keep_alive.stop().await,
        sampled: sampler.finish(),
    }
}

/// Issue 4's main scenario, with the socket reached as `access` says.
async fn six_hosts_in_groups_of_35_percent(access: Access) {
    let started = Instant::now();
    let fleet = FrontFleet::start(6, None);
    let config = fleet.config(access, "");
    let r = rollout_under_load(&fleet, &config).await;
    let all = text(&r.out);
    assert_eq!(r.out.status.code(), Some(0), "{all}");

    for (kind, report) in [("new connections", &r.fresh), ("keep-alive", &r.keep_alive)] {
        assert_eq!(
            report.failures, 0,
            "{kind}: failed requests: {report}\n{all}"
        );
        assert!(report.requests > 50, "{kind}: the load ran: {report}");
    }
    assert!(
        r.fresh.versions_seen.contains_key("v2"),
        "traffic reached v2: {}",
        r.fresh
    );
    assert_eq!(
        fleet.versions(),
        vec!["v2"; 18],
        "all 18 instances on v2\n{all}"
    );

    let s = &r.sampled;
    assert_eq!(s.read_errors, 0, "the sampler was never blind: {s}");
    assert!(s.samples > 20, "HAProxy was sampled: {s}");
    assert!(
        s.ever_out,
        "the sampler saw units go out (else it proves nothing): {s}"
    );
    // Groups of max(1, floor(35 % of 6)) = 2 hosts, one instance per host
    // of the group at a time.
    assert!(s.max_out_total <= 2, "at most 2 instances out at once: {s}");
    assert!(
        s.max_out_on_one_host <= 1,
        "never two instances of one host out at once: {s}"
    );

    for (unit, (status, weight)) in fleet.lb_states() {
        assert_eq!(status, "UP", "{unit} back in rotation\n{all}");
        assert_eq!(weight, 1, "{unit} back at its weight\n{all}");
    }
    if matches!(access, Access::SocketAndGlobal) {
        // The global HAProxy took each host out (journaled before every
        // change) and has every host back in.
        let journal =
            std::fs::read_to_string(fleet.tier.dir().join("state/journal.ndjson")).unwrap();
        for host in fleet.tier.hosts() {
            let member = format!("\"member\":\"{GLOBAL_BACKEND}/{}\"", host.name);
            assert!(
                journal.contains(&member),
                "{member} in the journal:\n{journal}"
            );
            let row =
                fleet
                    .tier
                    .global()
                    .wait_for_status(&host.name, "UP", Duration::from_secs(10));
            assert_eq!(row.status, "UP");
        }
    }
    eprintln!(
        "{access:?}: {:.1?} in all; {}; {}; {}",
        started.elapsed(),
        r.fresh,
        r.keep_alive,
        r.sampled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_tier_rollout_over_forwarded_sockets_drops_nothing() {
    six_hosts_in_groups_of_35_percent(Access::Socket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_tier_rollout_with_socket_command_drops_nothing() {
    // Runs on the hosts, but they are this machine: fail with an install
    // hint rather than with the product's report of a failed command.
    tools::require("socat", "socat");
    six_hosts_in_groups_of_35_percent(Access::Command).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_tier_with_the_global_balancer_too_drops_nothing() {
    six_hosts_in_groups_of_35_percent(Access::SocketAndGlobal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_tier_naive_restart_drops_requests() {
    // The same fleet, load and restarts, but nothing taken out of either
    // HAProxy: the load must see failures, or two layers of HAProxy could
    // be hiding them in the tests above.
    let fleet = FrontFleet::start(6, None);
    let config = fleet.config(Access::NoTakeOut, "");
    let r = rollout_under_load(&fleet, &config).await;
    eprintln!("no take-out: {}; {}", r.fresh, r.keep_alive);
    assert_eq!(r.out.status.code(), Some(0), "{}", text(&r.out));
    assert_eq!(fleet.versions(), vec!["v2"; 18]);
    assert!(
        r.fresh.failures + r.keep_alive.failures > 0,
        "a naive restart must drop requests: {}; {}",
        r.fresh,
        r.keep_alive
    );
}

#[test]
fn weight_method_puts_back_the_weight_each_server_had() {
    // Configured at 37 (not HAProxy's default 1), and one server changed
    // at runtime to 23: the product must read each weight before taking
    // the server out, not fall back to a constant or to the config file.
    let fleet = FrontFleet::start(3, Some(37));
    fleet.tier.host_lb(1).command("set weight pxapp/pxApp_2 23");
    let mut expected: BTreeMap<String, u32> = fleet
        .lb_states()
        .into_iter()
        .map(|(unit, (_, weight))| (unit, weight))
        .collect();
    assert_eq!(expected.remove("web-2/pxApp_2"), Some(23), "{expected:?}");
    assert!(expected.values().all(|w| *w == 37), "{expected:?}");
    expected.insert("web-2/pxApp_2".to_string(), 23);

    let config = fleet.config(Access::Socket, "");
    let watch = WeightWatch::start(&fleet);
    let sampler = fleet.tier.sampler();
    let out = changeover(&config, &["deploy", "--version", "v2"]);
    let sampled = sampler.finish();
    let lowest = watch.finish();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(fleet.versions(), vec!["v2"; 9], "{all}");

    // Every unit really went out by weight (else the restore proves
    // nothing) ...
    for (unit, low) in &lowest {
        assert_eq!(*low, 0, "{unit} was taken out by weight 0: {lowest:?}");
    }
    assert_eq!(lowest.len(), 9, "{lowest:?}");
    // ... and came back at exactly the weight it had.
    let after: BTreeMap<String, u32> = fleet
        .lb_states()
        .into_iter()
        .map(|(unit, (status, weight))| {
            assert_eq!(status, "UP", "{unit} back in rotation\n{all}");
            (unit, weight)
        })
        .collect();
    assert_eq!(after, expected, "weights after the rollout\n{all}");
    assert!(
        sampled.ever_out && sampled.max_out_on_one_host <= 1,
        "{sampled}"
    );
}

/// Polls every host's `show servers state` and keeps each unit's lowest
/// `srv_uweight`: shows that a unit was taken out by weight, which the
/// status column (DRAIN either way) cannot tell. Bounded like the sampler.
struct WeightWatch {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<BTreeMap<String, u32>>>,
}

impl WeightWatch {
    fn start(fleet: &FrontFleet) -> WeightWatch {
        let hosts: Vec<(String, PathBuf)> = fleet
            .tier
            .hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                (
                    h.name.clone(),
                    fleet.tier.host_lb(i).socket_path().to_path_buf(),
                )
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut lowest = BTreeMap::new();
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                for (name, socket) in &hosts {
                    let Ok(rows) = haproxy::servers_state_at(socket) else {
                        continue;
                    };
                    for row in rows.into_iter().filter(|r| r.backend == BACKEND) {
                        let low = lowest
                            .entry(format!("{name}/{}", row.name))
                            .or_insert(row.uweight);
                        *low = (*low).min(row.uweight);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            lowest
        });
        WeightWatch {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> BTreeMap<String, u32> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for WeightWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[test]
fn a_missing_socket_on_a_host_is_a_clear_no_go() {
    let fleet = FrontFleet::start(2, None);
    let config = fleet.config(Access::Socket, "");
    let text_config = std::fs::read_to_string(&config).unwrap();
    let socket = fleet.tier.shared_socket().display().to_string();
    std::fs::write(
        &config,
        text_config.replace(&socket, "/run/nowhere/admin.sock"),
    )
    .unwrap();
    let out = changeover(&config, &["check"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(
        all.contains("web-1") && all.contains("could not connect to /run/nowhere/admin.sock"),
        "names the host and the socket: {all}"
    );
    assert_eq!(fleet.versions(), vec!["v1"; 6], "nothing changed");
}

/// Kill -9 anywhere in a front-tier rollout (weight method over forwarded
/// sockets), then `recover`: every instance back at exactly its weight.
#[test]
fn kill_9_anywhere_in_a_front_tier_then_recover_restores_exact_weights() {
    let fleet = FrontFleet::start(3, Some(37));
    fleet.tier.host_lb(1).command("set weight pxapp/pxApp_2 23");
    let expected: BTreeMap<String, u32> = fleet
        .lb_states()
        .into_iter()
        .map(|(unit, (_, weight))| (unit, weight))
        .collect();
    let config = fleet.config(Access::Socket, "");
    let (mut rng, seed) = crate::crash::Rng::from_env();
    let n = crate::crash::trials().div_ceil(2);
    eprintln!("front tier kill -9 trials: {n}, seed {seed}");
    let mut mid_way = 0;
    for t in 0..n {
        let version = if t % 2 == 0 { "v2" } else { "v1" };
        // 9 units, one at a time per host: about 7 s once begun.
        let (what, _) = crate::crash::kill_trial(
            &config,
            &fleet.tier.dir().join("state"),
            &mut rng,
            Duration::from_millis(7000),
            &format!("front trial {t} (seed {seed})"),
            version,
        );
        let rec = changeover(&config, &["recover"]);
        assert_eq!(rec.status.code(), Some(0), "{what}\n{}", text(&rec));
        if !String::from_utf8_lossy(&rec.stdout).contains("nothing to recover") {
            mid_way += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now = fleet.lb_states();
            let weights: BTreeMap<String, u32> =
                now.iter().map(|(u, (_, w))| (u.clone(), *w)).collect();
            if weights == expected && now.values().all(|(s, _)| s == "UP") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {now:?}, expected weights {expected:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for v in fleet.versions() {
            assert!(v == "v1" || v == "v2", "{what}: an instance runs {v:?}");
        }
    }
    eprintln!("{n} front trials, {mid_way} killed mid-rollout");
    assert!(
        mid_way > 0,
        "no trial killed a rollout mid-way (seed {seed})"
    );
    let out = changeover(&config, &["deploy", "--version", "v3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fleet.versions(), vec!["v3"; 9]);
}
