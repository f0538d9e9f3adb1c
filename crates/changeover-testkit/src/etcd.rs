//! A real single-member `etcd` on loopback in a temp dir, killed on drop.
//!
//! ```no_run
//! use changeover_testkit::etcd::Etcd;
//! let plain = Etcd::builder().start();
//! let secure = Etcd::builder().tls().auth().start();
//! println!("{} {:?}", plain.endpoint(), secure.tls_files());
//! ```
//!
//! - Client and peer URLs are free ports on 127.0.0.1; a port taken by a
//!   parallel test between picking and binding makes the fixture start
//!   again on other ports.
//! - The data dir is under `/dev/shm` when there is one (etcd fsyncs every
//!   write; tests write a lot), else the system temp dir.
//! - [`EtcdBuilder::tls`]: a CA, a server certificate for 127.0.0.1 and a
//!   client certificate are generated (rcgen) and etcd runs with
//!   `--client-cert-auth`: every client must present a certificate signed
//!   by the CA.
//! - [`EtcdBuilder::auth`]: users `root` and [`EtcdAuth::username`] (with a
//!   role reading and writing everything under `/changeover/`) are created
//!   and `auth enable` is run, with etcdctl.
//! - [`Etcd::kill`] (SIGKILL) and [`Etcd::restart`] (same data, same ports).

use crate::tools;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long etcd gets to answer after it starts.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// Another test may take a port between picking and binding it.
const START_ATTEMPTS: usize = 5;

/// The key prefix the [`EtcdBuilder::auth`] user may read and write.
pub const AUTH_PREFIX: &str = "/changeover/";

/// Options for [`Etcd`]; [`EtcdBuilder::start`] runs it.
#[derive(Debug, Clone, Default)]
pub struct EtcdBuilder {
    tls: bool,
    auth: bool,
    auth_token_ttl: Option<u32>,
}

impl EtcdBuilder {
    /// Serve clients over TLS only, and demand a client certificate signed
    /// by the generated CA (see [`Etcd::tls_files`]).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Enable authentication: root plus a user with a password (see
    /// [`Etcd::auth`]), allowed everything under [`AUTH_PREFIX`].
    pub fn auth(mut self) -> Self {
        self.auth = true;
        self
    }

    /// How long an idle auth token stays valid (etcd's `--auth-token-ttl`,
    /// default 300 s): short, to see clients re-authenticate.
    pub fn auth_token_ttl(mut self, seconds: u32) -> Self {
        self.auth_token_ttl = Some(seconds);
        self
    }

    /// Start etcd and wait until it answers (and, with [`Self::auth`], until
    /// authentication is on). Panics with etcd's own log on any failure.
    pub fn start(self) -> Etcd {
        let program = tools::require("etcd", "etcd-server");
        let etcdctl = tools::require("etcdctl", "etcd-client");
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = temp_dir();
            let tls = self.tls.then(|| TlsFiles::generate(dir.path()));
            let client_port = free_port();
            let peer_port = loop {
                let p = free_port();
                if p != client_port {
                    break p;
                }
            };
            let mut etcd = Etcd {
                program: program.clone(),
                etcdctl: etcdctl.clone(),
                client_port,
                peer_port,
                tls,
                auth: None,
                auth_token_ttl: self.auth_token_ttl,
                child: None,
                log_path: dir.path().join("etcd.log"),
                data_dir: dir.path().join("data"),
                dir,
            };
            etcd.spawn();
            match etcd.wait_ready() {
                Ok(()) => {
                    if self.auth {
                        etcd.enable_auth();
                    }
                    return etcd;
                }
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!("etcd did not start\n--- etcd log ---\n{log}"),
            }
        }
        panic!("etcd could not bind free ports in {START_ATTEMPTS} attempts\n--- last etcd log ---\n{last_log}");
    }
}

pub use crate::tls::TlsFiles;

/// The users of an [`EtcdBuilder::auth`] etcd.
#[derive(Debug, Clone)]
pub struct EtcdAuth {
    /// A user allowed everything under [`AUTH_PREFIX`], nothing else.
    pub username: String,
    pub password: String,
    pub root_password: String,
}

/// A running etcd; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Etcd {
    program: PathBuf,
    etcdctl: PathBuf,
    client_port: u16,
    peer_port: u16,
    tls: Option<TlsFiles>,
    auth: Option<EtcdAuth>,
    auth_token_ttl: Option<u32>,
    child: Option<Child>,
    log_path: PathBuf,
    data_dir: PathBuf,
    // Last, so the directory goes after the process that uses it.
    dir: tempfile::TempDir,
}

impl Etcd {
    pub fn builder() -> EtcdBuilder {
        EtcdBuilder::default()
    }

    /// The client URL: `http://127.0.0.1:PORT`, `https://…` with TLS.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The certificates and keys, with [`EtcdBuilder::tls`].
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The users, with [`EtcdBuilder::auth`].
    pub fn auth(&self) -> Option<&EtcdAuth> {
        self.auth.as_ref()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything etcd printed so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the process is running (not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL etcd and reap it. The data dir stays, for [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start etcd again on the same ports and data (after [`Self::kill`];
    /// kills a running one first) and wait until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            self.spawn();
            match self.wait_ready() {
                Ok(()) => return,
                // The killed process's port may linger for a moment.
                Err(log) if log.contains("address already in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(log) => panic!("etcd did not restart\n--- etcd log ---\n{log}"),
            }
        }
    }

    /// Run `etcdctl` against this etcd (v3 API, with the client certificate
    /// and as root when those are on) and return its output as is.
    pub fn etcdctl_output(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.etcdctl);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=2s")
            // A loaded machine (parallel tests on two cores) can be slow.
            .arg("--command-timeout=15s");
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cacert={}", tls.ca_file.display()))
                .arg(format!("--cert={}", tls.client_cert.display()))
                .arg(format!("--key={}", tls.client_key.display()));
        }
        if let Some(auth) = &self.auth {
            cmd.arg(format!("--user=root:{}", auth.root_password));
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.etcdctl.display()))
    }

    /// Run `etcdctl`, panic unless it succeeds, return its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl_output(args);
        if !out.status.success() {
            panic!(
                "etcdctl {args:?} failed ({}):\n{}{}\n--- etcd log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open etcd.log");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(&self.program);
        cmd.arg("--name=test")
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-level=warn");
        if let Some(ttl) = self.auth_token_ttl {
            cmd.arg(format!("--auth-token-ttl={ttl}"));
        }
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca_file.display()))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// `Err(log)` when etcd exits or does not answer in time.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let child = self.child.as_mut().expect("etcd was spawned");
            if let Some(status) = child.try_wait().expect("poll etcd") {
                self.child = None;
                return Err(format!("etcd exited ({status})\n{}", self.log()));
            }
            // With auth on, `endpoint health` counts "permission denied"
            // as healthy; as root it is allowed anyway.
            let out = self.etcdctl_output(&["endpoint", "health"]);
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "etcd did not answer within {START_DEADLINE:?}; last etcdctl: {}{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn enable_auth(&mut self) {
        let auth = EtcdAuth {
            username: "deployer".into(),
            password: format!("pw-{}-{}", std::process::id(), self.client_port),
            root_password: format!("root-{}-{}", self.client_port, std::process::id()),
        };
        let root = format!("root:{}", auth.root_password);
        let user = format!("{}:{}", auth.username, auth.password);
        self.etcdctl(&["user", "add", &root]);
        self.etcdctl(&["user", "add", &user]);
        self.etcdctl(&["role", "add", "changeover"]);
        self.etcdctl(&[
            "role",
            "grant-permission",
            "changeover",
            "--prefix=true",
            "readwrite",
            AUTH_PREFIX,
        ]);
        self.etcdctl(&["user", "grant-role", &auth.username, "changeover"]);
        self.etcdctl(&["auth", "enable"]);
        // From here on etcdctl logs in as root.
        self.auth = Some(auth);
        if let Err(log) = self.wait_ready() {
            panic!("etcd stopped answering after `auth enable`\n--- etcd log ---\n{log}");
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn temp_dir() -> tempfile::TempDir {
    let mut builder = tempfile::Builder::new();
    builder.prefix("changeover-etcd-");
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        builder.tempdir_in(shm).or_else(|_| builder.tempdir())
    } else {
        builder.tempdir()
    };
    dir.expect("create temp dir for etcd")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port on 127.0.0.1")
}
