use super::*;

// ---------------------------------------------------------------------------
// The holder process

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Then {
    /// Hold until killed (at most 2 min).
    Sleep,
    /// Exit at once (dropping the guard, not releasing it).
    Exit,
}

#[derive(Serialize, Deserialize)]
struct HolderJob {
    store: StoreConfig,
    lock: String,
    kind: LockKind,
    then: Then,
}

/// Not a check: the body of the holder process (see the top of the file).
#[test]
fn holder_process() {
    let Ok(job) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let job: HolderJob = serde_json::from_str(&job).expect("holder job");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let store = job.store.open().await;
        let outcome = store.acquire(&record(&job.lock, job.kind)).await;
        let guard = match outcome {
            Ok(Acquired::Held(g)) => {
                println!("\nHELD {}", std::process::id());
                g
            }
            Ok(Acquired::Busy(r)) => {
                println!("\nBUSY {}", serde_json::to_string(&r).unwrap());
                return;
            }
            Err(e) => {
                println!("\nERROR {e}");
                std::process::exit(3);
            }
        };
        if job.then == Then::Sleep {
            let lost = guard.lost();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(120)) => {}
                _ = lost.cancelled() => println!("\nLOST"),
            }
        }
        drop(guard);
    });
}

/// A holder process; killed on drop.
pub(crate) struct Holder {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Holder {
    pub(crate) fn start(store: &StoreConfig, lock: &str, kind: LockKind, then: Then) -> Holder {
        let job = HolderJob {
            store: store.clone(),
            lock: lock.to_string(),
            kind,
            then,
        };
        let exe = std::env::current_exe().expect("the test binary");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            "holder::holder_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, serde_json::to_string(&job).unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some((var, pw)) = store.password_var() {
            cmd.env(var, pw);
        }
        let mut child = cmd.spawn().expect("start the holder process");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let out_tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if out_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Whatever the holder says on stderr (a panic) is kept for the
        // failure message.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(format!("stderr: {line}")).is_err() {
                    break;
                }
            }
        });
        Holder { child, lines }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The holder's first `HELD`/`BUSY`/`ERROR` line.
    pub(crate) fn outcome(&self) -> String {
        let deadline = Instant::now() + HOLDER_DEADLINE;
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line)
                    if line.starts_with("HELD ")
                        || line.starts_with("BUSY ")
                        || line.starts_with("ERROR ") =>
                {
                    return line
                }
                Ok(line) => said.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "holder process {} gave no answer within {HOLDER_DEADLINE:?}; it said:\n{}",
                    self.pid(),
                    said.join("\n")
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "holder process {} ended without an answer; it said:\n{}",
                    self.pid(),
                    said.join("\n")
                ),
            }
        }
    }

    pub(crate) fn expect_held(&self) {
        let line = self.outcome();
        assert_eq!(
            line,
            format!("HELD {}", self.pid()),
            "the holder process should hold the lock"
        );
    }

    pub(crate) fn expect_busy(&self) -> LockRecord {
        let line = self.outcome();
        let rec = line.strip_prefix("BUSY ").unwrap_or_else(|| {
            panic!("the holder process should find the lock busy, said {line:?}")
        });
        serde_json::from_str(rec).expect("a lock record")
    }

    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub(crate) fn wait_exit(&mut self) {
        let deadline = Instant::now() + HOLDER_DEADLINE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll the holder") {
                assert!(status.success(), "holder exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "holder process {} did not exit within {HOLDER_DEADLINE:?}",
            self.pid()
        );
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.kill9();
    }
}
