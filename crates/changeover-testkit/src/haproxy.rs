//! A real `haproxy` in a temp dir, killed on drop.
//!
//! ```no_run
//! use changeover_testkit::haproxy::Haproxy;
//! let lb = Haproxy::builder()
//!     .server("web-1", "127.0.0.1:8081")
//!     .server_weighted("web-2", "127.0.0.1:8082", 37)
//!     .tcp_admin_socket()
//!     .start();
//! lb.wait_for_status("web-1", "UP", std::time::Duration::from_secs(5));
//! ```

use crate::tools;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Health checks fast enough that tests see a state change within a few
/// hundred milliseconds.
pub const DEFAULT_CHECK: &str = "check inter 100ms fastinter 100ms downinter 100ms rise 1 fall 1";

/// One `server` line of the backend.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub name: String,
    pub addr: String,
    pub weight: Option<u32>,
}

/// Builds the config; [`HaproxyBuilder::start`] runs it.
#[derive(Debug, Clone)]
pub struct HaproxyBuilder {
    backend: String,
    servers: Vec<ServerSpec>,
    check: String,
    tcp_admin: bool,
    extra_backend: Vec<String>,
    frontend: Option<SocketAddr>,
}

impl HaproxyBuilder {
    /// Backend name (default "app").
    pub fn backend(mut self, name: &str) -> Self {
        self.backend = name.to_string();
        self
    }

    pub fn server(mut self, name: &str, addr: &str) -> Self {
        self.servers.push(ServerSpec {
            name: name.to_string(),
            addr: addr.to_string(),
            weight: None,
        });
        self
    }

    pub fn server_weighted(mut self, name: &str, addr: &str, weight: u32) -> Self {
        self.servers.push(ServerSpec {
            name: name.to_string(),
            addr: addr.to_string(),
            weight: Some(weight),
        });
        self
    }

    /// Health check parameters appended to every server line (default
    /// [`DEFAULT_CHECK`]); an empty string means no check ("no check" status).
    pub fn check(mut self, params: &str) -> Self {
        self.check = params.to_string();
        self
    }

    /// Also listen for the Runtime API on TCP (see [`Haproxy::tcp_admin_addr`]).
    pub fn tcp_admin_socket(mut self) -> Self {
        self.tcp_admin = true;
        self
    }

    /// Where the HTTP frontend listens (default: a free port on 127.0.0.1),
    /// e.g. a fake host's own address for an HAProxy "on" that host.
    pub fn frontend_addr(mut self, addr: SocketAddr) -> Self {
        self.frontend = Some(addr);
        self
    }

    /// A raw line added to the backend section (e.g. `balance leastconn`).
    pub fn backend_line(mut self, line: &str) -> Self {
        self.extra_backend.push(line.to_string());
        self
    }

    /// Write the config, check it with `haproxy -c`, start haproxy in the
    /// foreground and wait until the admin socket answers. Panics with
    /// haproxy's own output on any failure.
    pub fn start(self) -> Haproxy {
        let program = tools::require("haproxy", "haproxy");
        let dir = tempfile::Builder::new()
            .prefix("changeover-haproxy-")
            .tempdir()
            .expect("create temp dir for haproxy");
        let socket_path = dir.path().join("admin.sock");
        let frontend_addr = self.frontend.unwrap_or_else(free_addr);
        let tcp_admin_addr = self.tcp_admin.then(free_addr);
        let config = self.config(&socket_path, frontend_addr, tcp_admin_addr);
        let config_path = dir.path().join("haproxy.cfg");
        std::fs::write(&config_path, &config).expect("write haproxy.cfg");

        let check = Command::new(&program)
            .arg("-c")
            .arg("-f")
            .arg(&config_path)
            .output()
            .expect("run haproxy -c");
        if !check.status.success() {
            panic!(
                "haproxy rejected the generated config:\n{}{}\n--- config ---\n{config}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr),
            );
        }

        let log_path = dir.path().join("haproxy.log");
        let log = std::fs::File::create(&log_path).expect("create haproxy.log");
        let child = Command::new(&program)
            .arg("-f")
            .arg(&config_path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log file"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");

        let mut haproxy = Haproxy {
            child,
            socket_path,
            frontend_addr,
            tcp_admin_addr,
            config_path,
            log_path,
            backend: self.backend,
            dir,
        };
        haproxy.wait_ready();
        haproxy
    }

    fn config(&self, socket: &Path, frontend: SocketAddr, tcp_admin: Option<SocketAddr>) -> String {
        let mut c = String::new();
        c.push_str("global\n");
        // Two cores are shared with compilers and other fixtures.
        c.push_str("    nbthread 1\n");
        c.push_str(&format!(
            "    stats socket {} level admin\n",
            socket.display()
        ));
        if let Some(addr) = tcp_admin {
            c.push_str(&format!("    stats socket {addr} level admin\n"));
        }
        c.push_str(
            "\ndefaults\n    mode http\n    retries 0\n    timeout connect 1s\n    \
             timeout client 10s\n    timeout server 10s\n",
        );
        c.push_str(&format!(
            "\nfrontend fe\n    bind {frontend}\n    default_backend {}\n",
            self.backend
        ));
        c.push_str(&format!("\nbackend {}\n", self.backend));
        for line in &self.extra_backend {
            c.push_str(&format!("    {line}\n"));
        }
        for s in &self.servers {
            c.push_str(&format!("    server {} {}", s.name, s.addr));
            if let Some(w) = s.weight {
                c.push_str(&format!(" weight {w}"));
            }
            if !self.check.is_empty() {
                c.push_str(&format!(" {}", self.check));
            }
            c.push('\n');
        }
        c
    }
}

/// One server row of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRow {
    pub backend: String,
    pub name: String,
    pub status: String,
    pub weight: Option<u32>,
    pub scur: u64,
}

/// A running haproxy; killed (and reaped) on drop.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    socket_path: PathBuf,
    frontend_addr: SocketAddr,
    tcp_admin_addr: Option<SocketAddr>,
    config_path: PathBuf,
    log_path: PathBuf,
    backend: String,
    // Last, so the directory goes after the process that uses it.
    dir: tempfile::TempDir,
}

impl Haproxy {
    pub fn builder() -> HaproxyBuilder {
        HaproxyBuilder {
            backend: "app".to_string(),
            servers: Vec::new(),
            check: DEFAULT_CHECK.to_string(),
            tcp_admin: false,
            extra_backend: Vec::new(),
            frontend: None,
        }
    }

    /// The admin-level unix socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The admin-level TCP socket, if [`HaproxyBuilder::tcp_admin_socket`] asked for one.
    pub fn tcp_admin_addr(&self) -> Option<SocketAddr> {
        self.tcp_admin_addr
    }

    /// Where the HTTP frontend listens.
    pub fn frontend_addr(&self) -> SocketAddr {
        self.frontend_addr
    }

    pub fn backend(&self) -> &str {
        &self.backend
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// A soft reload, as `systemctl reload haproxy` does: a new process
    /// with the same config takes over the listeners (`-sf` the old one).
    /// The runtime state (drain, maint, weights set over the socket) is
    /// lost: every server starts again as the config says.
    pub fn reload(&mut self) {
        let program = tools::require("haproxy", "haproxy");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .expect("open haproxy.log");
        let old_pid = self.child.id();
        let child = Command::new(&program)
            .arg("-f")
            .arg(&self.config_path)
            .arg("-db")
            .arg("-sf")
            .arg(old_pid.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log file"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy for the reload");
        let mut old = std::mem::replace(&mut self.child, child);
        self.wait_ready();
        // The old process finishes its connections and exits; bounded.
        let deadline = Instant::now() + Duration::from_secs(15);
        while old.try_wait().expect("poll old haproxy").is_none() {
            if Instant::now() >= deadline {
                let _ = old.kill();
                let _ = old.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything haproxy printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Run one Runtime API command and return the answer as is.
    pub fn command(&self, command: &str) -> String {
        self.try_command(command).unwrap_or_else(|e| {
            panic!(
                "haproxy admin socket {}: `{command}` failed: {e}\n--- haproxy log ---\n{}",
                self.socket_path.display(),
                self.log()
            )
        })
    }

    fn try_command(&self, command: &str) -> std::io::Result<String> {
        command_at(&self.socket_path, command)
    }

    /// Every server's `show servers state` row (all backends).
    pub fn servers_state(&self) -> Vec<ServerState> {
        servers_state_at(&self.socket_path)
            .unwrap_or_else(|e| panic!("{e}\n--- haproxy log ---\n{}", self.log()))
    }

    /// The weight `server` of the fixture's backend is configured with
    /// right now (`srv_uweight`: what `set weight` changes, not the
    /// slow-start scaled effective weight).
    pub fn user_weight(&self, server: &str) -> u32 {
        self.servers_state()
            .into_iter()
            .find(|r| r.backend == self.backend && r.name == server)
            .unwrap_or_else(|| panic!("haproxy has no server {}/{server}", self.backend))
            .uweight
    }

    /// The server rows of `show stat`.
    pub fn show_stat(&self) -> Vec<StatRow> {
        let text = self.command("show stat -1 4 -1");
        parse_stat(&text).unwrap_or_else(|e| panic!("{e}\n--- show stat ---\n{text}"))
    }

    /// The `show stat` row of `server` in the fixture's backend.
    pub fn server(&self, server: &str) -> StatRow {
        self.show_stat()
            .into_iter()
            .find(|r| r.backend == self.backend && r.name == server)
            .unwrap_or_else(|| panic!("haproxy has no server {}/{server}", self.backend))
    }

    /// Wait until `server`'s status word is exactly `status` (e.g. "UP",
    /// "DRAIN", "MAINT"); panics with the last one seen after `timeout`.
    pub fn wait_for_status(&self, server: &str, status: &str, timeout: Duration) -> StatRow {
        let deadline = Instant::now() + timeout;
        loop {
            let row = self.server(server);
            if row.status == status {
                return row;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}/{server} is still {:?} after {timeout:?}, expected {status:?}",
                    self.backend, row.status
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll haproxy") {
                panic!(
                    "haproxy exited ({status}) before its admin socket answered\n--- haproxy log ---\n{}",
                    self.log()
                );
            }
            if let Ok(answer) = self.try_command("show info") {
                if answer.contains("Name:") {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "haproxy's admin socket {} did not answer within 10s\n--- haproxy log ---\n{}",
                    self.socket_path.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run one Runtime API command on the admin socket at `socket` and return the
/// answer as is. For readers that hold no [`Haproxy`] (a sampler thread).
pub fn command_at(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// The server rows of `show stat` from the admin socket at `socket`.
pub fn show_stat_at(socket: &Path) -> Result<Vec<StatRow>, String> {
    let text = command_at(socket, "show stat -1 4 -1")
        .map_err(|e| format!("{}: show stat: {e}", socket.display()))?;
    parse_stat(&text).map_err(|e| format!("{}: {e}\n--- show stat ---\n{text}", socket.display()))
}

/// One row of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub name: String,
    /// `srv_addr`.
    pub addr: String,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u32,
    /// `srv_admin_state` bits (0x01 forced maint, 0x08 forced drain, …).
    pub admin_state: u32,
    /// `srv_uweight`: the weight set by config or `set weight`.
    pub uweight: u32,
    /// `srv_iweight`: the weight from the config file.
    pub iweight: u32,
}

/// The rows of `show servers state` from the admin socket at `socket`.
pub fn servers_state_at(socket: &Path) -> Result<Vec<ServerState>, String> {
    let text = command_at(socket, "show servers state")
        .map_err(|e| format!("{}: show servers state: {e}", socket.display()))?;
    parse_servers_state(&text).map_err(|e| {
        format!(
            "{}: {e}\n--- show servers state ---\n{text}",
            socket.display()
        )
    })
}

/// Parse a `show servers state` answer (however it was obtained, e.g.
/// through `socat` over SSH): a format version line, then a
/// `# be_id be_name …` header and space-separated rows; columns by header
/// name.
pub fn parse_servers_state(text: &str) -> Result<Vec<ServerState>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let version = lines.next().ok_or("empty `show servers state` answer")?;
    if version.trim() != "1" {
        return Err(format!("unknown `show servers state` format {version:?}"));
    }
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .ok_or("`show servers state` has no `# be_id ...` header")?;
    let names: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .ok_or(format!("show servers state has no `{name}` column"))
    };
    let (be, sv, addr, op, admin, uw, iw) = (
        col("be_name")?,
        col("srv_name")?,
        col("srv_addr")?,
        col("srv_op_state")?,
        col("srv_admin_state")?,
        col("srv_uweight")?,
        col("srv_iweight")?,
    );
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let get = |i: usize| fields.get(i).copied().unwrap_or("");
            let num = |i: usize| {
                get(i).parse::<u32>().map_err(|_| {
                    format!(
                        "bad number {:?} in `show servers state` row {line:?}",
                        get(i)
                    )
                })
            };
            Ok(ServerState {
                backend: get(be).to_string(),
                name: get(sv).to_string(),
                addr: get(addr).to_string(),
                op_state: num(op)?,
                admin_state: num(admin)?,
                uweight: num(uw)?,
                iweight: num(iw)?,
            })
        })
        .collect()
}

/// A loopback address nobody listens on right now. Another process may take
/// it before haproxy binds; rare enough for tests.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port on 127.0.0.1")
}

/// `show stat` CSV by header name (the columns move between versions).
fn parse_stat(text: &str) -> Result<Vec<StatRow>, String> {
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .ok_or("show stat answer has no `# pxname,...` header")?;
    let names: Vec<&str> = header.split(',').collect();
    let col = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .ok_or(format!("show stat has no `{name}` column"))
    };
    let (px, sv, status, weight, scur) = (
        col("pxname")?,
        col("svname")?,
        col("status")?,
        col("weight")?,
        col("scur")?,
    );
    Ok(lines
        .map(|line| {
            // Free-text columns (check_desc, ...) may be quoted and hold commas.
            let fields = split_csv(line);
            let get = |i: usize| fields.get(i).cloned().unwrap_or_default();
            StatRow {
                backend: get(px),
                name: get(sv),
                status: get(status),
                weight: get(weight).parse().ok(),
                scur: get(scur).parse().unwrap_or(0),
            }
        })
        .filter(|r| r.name != "FRONTEND" && r.name != "BACKEND")
        .collect())
}

fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}
