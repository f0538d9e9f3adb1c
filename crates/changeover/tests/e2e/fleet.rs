//! A whole test fleet: one real sshd per host on 127.0.1.N, a real HAProxy in
//! front with one server per host, and on every host the demo app (this very
//! binary's hidden `demo-app`), restarted with a new version by `app-ctl.sh`
//! over SSH. Everything is killed on drop.

use changeover_testkit::haproxy::Haproxy;
use changeover_testkit::sshd::SshFleet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_changeover");

/// Restart one app instance: stop the old process gracefully (SIGTERM, it
/// finishes in-flight requests), start the new version detached. `dir` is
/// the instance's state (pid file, log); a file `fail-deploy` there makes
/// the step fail, as a broken release would, and `unhealthy-<version>`
/// makes that version's `/health` answer 503.
const APP_CTL: &str = r#"#!/bin/sh
set -eu
dir=$1 listen=$2 version=$3
if [ -e "$dir/fail-deploy" ] || [ -e "$dir/fail-deploy-$version" ]; then
  echo "switching to $version: artifact checksum mismatch" >&2
  exit 3
fi
# An exited app stays a zombie until init reaps it, which some container
# inits do only every second or two; a zombie holds no port, so it counts
# as gone.
running() {
  kill -0 "$1" 2>/dev/null && ! grep -q ') Z ' "/proc/$1/stat" 2>/dev/null
}
if [ -f "$dir/app.pid" ]; then
  pid=$(cat "$dir/app.pid")
  if kill -TERM "$pid" 2>/dev/null; then
    i=0
    while running "$pid"; do
      i=$((i+1)); [ "$i" -gt 200 ] && kill -KILL "$pid" 2>/dev/null
      sleep 0.05
    done
  fi
  rm -f "$dir/app.pid"
fi
# Deploys (not the test's own starts) are counted, one line per version.
if [ -n "${DEPLOY_COUNT:-}" ]; then echo "$version" >> "$dir/deploys"; fi
setsid "$CHANGEOVER_BIN" demo-app --listen "$listen" --version "$version" \
  --boot-time "$BOOT_TIME" --think-time 5ms --unhealthy-file "$dir/unhealthy-$version" \
  >>"$dir/app.log" 2>&1 </dev/null &
echo $! > "$dir/app.pid"
echo "started $version on $listen"
"#;

/// `app-ctl.sh` installed in a test's temp dir: how the tests start app
/// instances (directly) and how the deploy step restarts them (over SSH).
pub struct AppCtl {
    path: PathBuf,
    boot_time: &'static str,
}

impl AppCtl {
    /// Write the script into `dir`; instances take `boot_time` to listen.
    pub fn install(dir: &Path, boot_time: &'static str) -> AppCtl {
        let path = dir.join("app-ctl.sh");
        std::fs::write(&path, APP_CTL).unwrap();
        make_executable(&path);
        AppCtl { path, boot_time }
    }

    /// Start `version` listening on `listen` (ip:port), with its state in
    /// `app_dir`, from the test process (not over SSH).
    pub fn start(&self, app_dir: &Path, listen: &str, version: &str) {
        let out = Command::new(&self.path)
            .args([app_dir.to_str().unwrap(), listen, version])
            .env("CHANGEOVER_BIN", BIN)
            .env("BOOT_TIME", self.boot_time)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "app-ctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The `[deploy] run` value; `app_dir` and `listen` may hold the
    /// product's placeholders (`{host}`, `{address}:{port}`, …).
    pub fn run_step(&self, app_dir: &str, listen: &str) -> String {
        format!(
            "DEPLOY_COUNT=1 CHANGEOVER_BIN={BIN} BOOT_TIME={boot} {ctl} {app_dir} {listen} {{version}}",
            boot = self.boot_time,
            ctl = self.path.display(),
        )
    }

    /// Kill the instance whose state is in `app_dir`, whichever version
    /// runs there (cleanup: no grace).
    pub fn kill(app_dir: &Path) {
        if let Ok(pid) = std::fs::read_to_string(app_dir.join("app.pid")) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
    }
}

pub struct FleetBuilder {
    hosts: usize,
    members: Option<usize>,
    boot_time: &'static str,
}

impl FleetBuilder {
    /// How long an app instance takes to listen after a (re)start.
    pub fn boot_time(mut self, t: &'static str) -> Self {
        self.boot_time = t;
        self
    }

    /// Only the first `n` hosts get a server in HAProxy (for "member missing").
    pub fn members(mut self, n: usize) -> Self {
        self.members = Some(n);
        self
    }

    pub fn start(self) -> Fleet {
        let dir = tempfile::Builder::new()
            .prefix("co-fleet")
            .tempdir()
            .expect("tempdir");
        let ssh = SshFleet::start(self.hosts);
        let port = free_port_on(ssh.hosts().iter().map(|h| h.address.as_str()));
        let mut builder = Haproxy::builder()
            .backend("app")
            .check("check inter 100ms fastinter 100ms downinter 100ms rise 2 fall 2")
            .backend_line("option httpchk GET /health")
            // HAProxy otherwise gives a check only `inter` to answer, and a
            // loaded test machine answers late now and then.
            .backend_line("timeout check 1s");
        for h in ssh.hosts().iter().take(self.members.unwrap_or(self.hosts)) {
            builder = builder.server(&h.name, &format!("{}:{port}", h.address));
        }
        let ctl = AppCtl::install(dir.path(), self.boot_time);
        let fleet_hosts: Vec<(String, String)> = ssh
            .hosts()
            .iter()
            .map(|h| (h.name.clone(), h.address.clone()))
            .collect();
        let apps = dir.path().join("apps");
        for (name, _) in &fleet_hosts {
            std::fs::create_dir_all(apps.join(name)).unwrap();
        }
        let fleet = Fleet {
            haproxy: builder.start(),
            ssh,
            dir,
            ctl,
            apps,
            port,
            hosts: fleet_hosts,
        };
        // Everyone on v1 and UP before the test starts.
        for i in 0..fleet.hosts.len() {
            fleet.start_app(i, "v1");
        }
        for (name, _) in fleet.hosts.iter().take(self.members.unwrap_or(self.hosts)) {
            fleet
                .haproxy
                .wait_for_status(name, "UP", Duration::from_secs(20));
        }
        fleet
    }
}

pub struct Fleet {
    pub haproxy: Haproxy,
    pub ssh: SshFleet,
    pub dir: TempDir,
    ctl: AppCtl,
    apps: PathBuf,
    pub port: u16,
    /// (name, address)
    pub hosts: Vec<(String, String)>,
}

impl Fleet {
    pub fn builder(hosts: usize) -> FleetBuilder {
        FleetBuilder {
            hosts,
            members: None,
            boot_time: "300ms",
        }
    }

    pub fn app_dir(&self, i: usize) -> PathBuf {
        self.apps.join(&self.hosts[i].0)
    }

    fn start_app(&self, i: usize, version: &str) {
        self.ctl.start(
            &self.app_dir(i),
            &format!("{}:{}", self.hosts[i].1, self.port),
            version,
        );
    }

    /// The config for this fleet; `lb` replaces the balancer table and
    /// `extra` is appended (strategy, drain, ...).
    pub fn config(&self, lb: Option<&str>, extra: &str) -> PathBuf {
        self.write_config(true, lb, extra)
    }

    /// The same config without `[[hosts]]`: `extra` brings `[discovery]`.
    pub fn config_without_hosts(&self, extra: &str) -> PathBuf {
        self.write_config(false, None, extra)
    }

    /// The fleet's hosts as `[discovery] command` prints them, with `tags`
    /// per host.
    pub fn inventory_json(&self, tags: impl Fn(usize) -> Vec<&'static str>) -> String {
        let hosts: Vec<serde_json::Value> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, (name, address))| {
                serde_json::json!({"name": name, "address": address, "tags": tags(i)})
            })
            .collect();
        serde_json::Value::Array(hosts).to_string()
    }

    fn write_config(&self, with_hosts: bool, lb: Option<&str>, extra: &str) -> PathBuf {
        let mut s = format!(
            "app = \"testapp\"\nstate_dir = \"state\"\n\n[ssh]\nconfig_file = \"{}\"\nmax_connections = 4\nconnect_timeout = \"5s\"\n\n",
            self.ssh.ssh_config_path().display()
        );
        for (name, address) in self.hosts.iter().filter(|_| with_hosts) {
            s.push_str(&format!(
                "[[hosts]]\nname = \"{name}\"\naddress = \"{address}\"\n\n"
            ));
        }
        let default_lb = format!(
            "[[load_balancers]]\nkind = \"haproxy\"\nsocket = \"{}\"\nbackend = \"app\"\nserver = \"{{host}}\"\n",
            self.haproxy.socket_path().display()
        );
        s.push_str(lb.unwrap_or(&default_lb));
        s.push_str(&format!(
            "\n[deploy]\nrun = \"{run}\"\ntimeout = \"30s\"\n\n\
             [health]\nhttp = \"http://{{address}}:{port}/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nhealthy_threshold = 2\ndeadline = \"10s\"\n\n",
            run = self.ctl.run_step(
                &format!("{}/{{host}}", self.apps.display()),
                &format!("{{address}}:{}", self.port)
            ),
            port = self.port,
        ));
        s.push_str(extra);
        let path = self.dir.path().join("changeover.toml");
        std::fs::write(&path, s).unwrap();
        path
    }

    /// The version each host's app answers with, asked directly.
    pub fn versions(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|(_, address)| {
                http_get(format!("{address}:{}", self.port).parse().unwrap(), "/")
                    .unwrap_or_else(|e| format!("<{e}>"))
            })
            .collect()
    }

    /// The versions deployed to host `i` by changeover's step, in order.
    pub fn deploys(&self, i: usize) -> Vec<String> {
        std::fs::read_to_string(self.app_dir(i).join("deploys"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Every host's deploy count.
    pub fn deploy_counts(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .map(|i| self.deploys(i).len())
            .collect()
    }

    pub fn frontend(&self) -> SocketAddr {
        self.haproxy.frontend_addr()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            AppCtl::kill(&self.app_dir(i));
        }
    }
}

/// Run the binary to completion.
pub fn changeover(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run changeover")
}

/// Samples HAProxy every 50 ms in a thread and keeps the most servers seen
/// out of service (not UP, or weight 0) at once.
pub struct OutSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(usize, u64)>>,
}

impl OutSampler {
    pub fn start(socket: PathBuf) -> OutSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut max = 0;
            let mut samples = 0;
            let deadline = Instant::now() + Duration::from_secs(300);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let out = servers_out(&socket);
                max = max.max(out);
                samples += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (max, samples)
        });
        OutSampler {
            stop,
            handle: Some(handle),
        }
    }

    /// (most out at once, samples taken)
    pub fn finish(mut self) -> (usize, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Servers of HAProxy's `show stat` that are not UP (DRAIN, MAINT, DOWN, …)
/// or have weight 0, read
/// straight off the socket (columns by header name).
fn servers_out(socket: &Path) -> usize {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return 0;
    };
    let _ = s.write_all(b"show stat\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let mut lines = text.lines();
    let Some(header) = lines.next() else { return 0 };
    let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .expect("show stat column")
    };
    let (sv, st, w) = (col("svname"), col("status"), col("weight"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > w && f[sv] != "BACKEND" && f[sv] != "FRONTEND")
        // "UP 1/2" is UP with a check in transition: serving traffic.
        .filter(|f| !f[st].starts_with("UP") || f[w] == "0")
        .count()
}

/// `GET path` with a connection of its own; the body, trimmed.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string())
}

fn free_port_on<'a>(addresses: impl Iterator<Item = &'a str> + Clone) -> u16 {
    for _ in 0..50 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if addresses
            .clone()
            .all(|a| TcpListener::bind((a, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on every fleet address");
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
