//! The front-end tier shape (`--shape front`): 6 hosts × 3 app instances,
//! each host with its own HAProxy in front of its instances (reached over
//! SSH at one path, the testkit's FrontTier), a global HAProxy in front of
//! the hosts carrying the load. changeover with `groups = "35%"` (2 hosts at
//! a time, instance by instance) against the classic Ansible play for it
//! (`serial: 35%`, per instance: weight 0, a fixed pause, replace the
//! instance, wait for health, weight back; `benches/ansible/front.yml`).

use super::measure::{self, Figures, Run};
use super::{Options, APP_CTL, BIN};
use changeover_testkit::frontfleet::{FrontTier, BACKEND};
use changeover_testkit::load::{LoadGen, LoadOptions};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const HOSTS: usize = 6;
const INSTANCES: usize = 3;

pub fn run(rt: &tokio::runtime::Runtime, opts: &Options) {
    println!(
        "front-end tier bench: {HOSTS} hosts × {INSTANCES} instances, groups of 35 %, boot {:?}..{:?}",
        opts.boot_min, opts.boot_max
    );
    let setup = Instant::now();
    let tier = FrontTier::builder(HOSTS).instances(INSTANCES).start();
    let dir = tier.dir().to_path_buf();
    let ctl = dir.join("app-ctl.sh");
    std::fs::write(&ctl, APP_CTL).unwrap();
    measure::make_executable(&ctl);
    let apps = dir.join("apps");
    let units: Vec<(usize, usize)> = (0..HOSTS)
        .flat_map(|i| (1..=INSTANCES).map(move |k| (i, k)))
        .collect();
    let _kill = KillApps(
        units
            .iter()
            .map(|&(i, k)| app_dir(&tier, &apps, i, k))
            .collect(),
    );
    for &(i, k) in &units {
        let d = app_dir(&tier, &apps, i, k);
        std::fs::create_dir_all(&d).unwrap();
        let out = Command::new(&ctl)
            .arg(&d)
            .arg(tier.instance_addr(i, k).to_string())
            .arg("v1")
            .env("CHANGEOVER_BIN", BIN)
            .output()
            .unwrap();
        assert!(out.status.success(), "app-ctl: {out:?}");
    }
    tier.wait_all_up(Duration::from_secs(60));
    println!("  set up in {:.1} s", setup.elapsed().as_secs_f64());

    let boot_env = format!(
        "BOOT_MIN_MS={} BOOT_SPAN_MS={}",
        opts.boot_min.as_millis(),
        (opts.boot_max - opts.boot_min).as_millis()
    );
    let ssh_config = tier.ssh().ssh_config_path().to_path_buf();
    let mut results = Vec::new();
    for (n, run) in opts.runs.iter().filter(|r| *r != "window").enumerate() {
        let version = format!("v{}", n + 2);
        let load = rt.block_on(async {
            LoadGen::start(LoadOptions {
                rps: 100,
                max_duration: Duration::from_secs(1800),
                max_requests: 1_000_000,
                ..LoadOptions::new(tier.global().frontend_addr())
            })
        });
        let sampler = tier.sampler();
        let mut figures = match run.as_str() {
            "batch" => {
                let config = config(&tier, &ctl, &apps, &boot_env);
                Run::changeover(
                    BIN,
                    &config,
                    &["deploy", "--version", &version],
                    &ssh_config,
                    2,
                )
            }
            "ansible" => {
                if !measure::ansible_installed() {
                    println!("  ansible: `ansible-playbook` not installed (pip install ansible): skipped");
                    continue;
                }
                ansible(&tier, &ctl, &apps, &boot_env, &version)
            }
            other => panic!("unknown run {other} for the front shape: batch or ansible"),
        };
        let report = sampler.finish();
        figures.max_out = report.max_out_total;
        let load = rt.block_on(load.stop());
        figures.requests = load.requests;
        figures.failures = load.failures;
        for &(i, k) in &units {
            let got = measure::http_get(&tier.instance_addr(i, k).to_string(), "/");
            assert_eq!(got, version, "{run}: host {i} instance {k}");
        }
        let name = if run == "batch" { "groups" } else { run };
        figures.print(name);
        println!("    most out on one host {}", report.max_out_on_one_host);
        results.push((name.to_string(), figures));
    }
    let by = |n: &str| results.iter().find(|(r, _)| r == n).map(|(_, f)| f.total);
    if let (Some(c), Some(a)) = (by("groups"), by("ansible")) {
        println!(
            "  changeover (groups) vs ansible: {:.2} s vs {:.2} s: {:.2}× faster",
            c.as_secs_f64(),
            a.as_secs_f64(),
            a.as_secs_f64() / c.as_secs_f64()
        );
    }
}

fn app_dir(tier: &FrontTier, apps: &std::path::Path, i: usize, k: usize) -> PathBuf {
    apps.join(&tier.hosts()[i].name).join(k.to_string())
}

fn config(
    tier: &FrontTier,
    ctl: &std::path::Path,
    apps: &std::path::Path,
    boot_env: &str,
) -> PathBuf {
    use std::fmt::Write as _;
    let mut s = format!(
        "app = \"front\"\nstate_dir = \"{}\"\n\n[ssh]\nconfig_file = \"{}\"\n\n",
        tier.dir().join("state").display(),
        tier.ssh().ssh_config_path().display()
    );
    for h in tier.hosts() {
        let _ = write!(
            s,
            "[[hosts]]\nname = \"{}\"\naddress = \"{}\"\n\n",
            h.name, h.address
        );
    }
    let _ = write!(
        s,
        "[instances]\ncount = {INSTANCES}\nfirst_port = {first}\n\n\
         [[load_balancers]]\nkind = \"haproxy\"\nscope = \"host\"\nsocket = \"{socket}\"\n\
         backend = \"{BACKEND}\"\nserver = \"pxApp_{{instance}}\"\nmethod = \"weight\"\n\n\
         [drain]\nmode = \"lb\"\ntimeout = \"30s\"\n\n\
         [deploy]\nrun = \"CHANGEOVER_BIN={BIN} {boot_env} {ctl} {apps}/{{host}}/{{instance}} {{address}}:{{port}} {{version}}\"\ntimeout = \"60s\"\n\n\
         [health]\nhttp = \"http://{{address}}:{{port}}/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nhealthy_threshold = 2\ndeadline = \"60s\"\n\n\
         [strategy]\ngroups = \"35%\"\n",
        first = tier.first_port(),
        socket = tier.shared_socket().display(),
        ctl = ctl.display(),
        apps = apps.display(),
    );
    let path = tier.dir().join("changeover.toml");
    std::fs::write(&path, s).unwrap();
    path
}

/// The classic play: the haproxy module runs on each host (its HAProxy's
/// socket is there), `serial: 35%`, the instances one after another.
fn ansible(
    tier: &FrontTier,
    ctl: &std::path::Path,
    apps: &std::path::Path,
    boot_env: &str,
    version: &str,
) -> Figures {
    measure::ansible(
        &tier.dir().join("ansible"),
        tier.hosts(),
        tier.ssh().ssh_config_path(),
        HOSTS,
        &measure::playbook("front.yml"),
        &format!(
            "version={version} haproxy_socket={} backend={BACKEND} first_port={} \
             switch_prefix='CHANGEOVER_BIN={BIN} {boot_env} {} {}'",
            tier.shared_socket().display(),
            tier.first_port(),
            ctl.display(),
            apps.display()
        ),
    )
}

/// Kills every instance on drop, whichever version runs there.
struct KillApps(Vec<PathBuf>);

impl Drop for KillApps {
    fn drop(&mut self) {
        for d in &self.0 {
            if let Ok(pid) = std::fs::read_to_string(d.join("app.pid")) {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
        }
    }
}
