//! Bad input, balancer side (issue 9): whatever the HAProxy Runtime API
//! answers, the adapter never panics, and each unit gets either exactly
//! what the answer says or an error naming what was wrong.
//!
//! Through the public surface only: [`HaproxyLb`] talks to a fake Runtime
//! API on a unix socket that answers `show servers state; show stat` and
//! `set server ...` lines with generated text. The answers are rendered
//! from a model (servers with admin bits, operational state, weights and
//! sessions), with columns in any order, extra columns, quoted CSV fields,
//! FRONTEND/BACKEND rows and servers missing from one view, so a
//! well-formed answer has one correct reading to compare with; then they
//! are damaged: truncated at any byte, a needed column dropped, a field
//! dropped, duplicated or inserted in one row, non-UTF-8 bytes injected,
//! CRLF line ends, blocks missing or swapped, empty, or random bytes.
//! Case counts are fixed so the file runs in seconds; `PROPTEST_CASES`
//! raises them all.

mod properties;

use changeover_adapters::lb::haproxy::{HaproxyLb, Method};
use changeover_core::lb::{AdminState, LbAction, LbError, LoadBalancer, MemberStatus, OperState};
use changeover_core::template::{Template, PLACEHOLDERS};
use changeover_core::unit::{Host, Unit};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

const SNAPSHOT_REQUEST: &str = "show servers state; show stat -1 4 -1";

// ---------------------------------------------------------------------------
// The fake Runtime API: one unix socket per test process, answers set per
// case, every request line recorded.

#[derive(Default)]
struct Answers {
    snapshot: Vec<u8>,
    set: Vec<u8>,
    requests: Vec<String>,
}

struct Fake {
    path: PathBuf,
    answers: Arc<Mutex<Answers>>,
    /// Cases share the socket: one at a time.
    turn: Mutex<()>,
    _dir: tempfile::TempDir,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A failing case panics with the guard held; the next case goes on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn fake() -> &'static Fake {
    static FAKE: OnceLock<Fake> = OnceLock::new();
    FAKE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let answers = Arc::new(Mutex::new(Answers::default()));
        let shared = answers.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut line = Vec::new();
                let _ = BufReader::new(&stream).read_until(b'\n', &mut line);
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                let answer = {
                    let mut a = lock(&shared);
                    let answer = if line.starts_with("show servers state") {
                        a.snapshot.clone()
                    } else {
                        a.set.clone()
                    };
                    a.requests.push(line);
                    answer
                };
                let _ = stream.write_all(&answer);
                // Dropping the stream ends the answer (non-interactive mode).
            }
        });
        Fake {
            path,
            answers,
            turn: Mutex::new(()),
            _dir: dir,
        }
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Run `f` against the fake answering `snapshot` and `set`; returns what
/// `f` returned and the request lines the fake saw.
fn with_answers<T, F: std::future::Future<Output = T>>(
    snapshot: &[u8],
    set: &[u8],
    f: impl FnOnce(HaproxyLb) -> F,
) -> (T, Vec<String>) {
    let fake = fake();
    let _turn = lock(&fake.turn);
    {
        let mut a = lock(&fake.answers);
        a.snapshot = snapshot.to_vec();
        a.set = set.to_vec();
        a.requests.clear();
    }
    let lb = adapter(Method::State);
    let out = runtime().block_on(f(lb));
    let requests = std::mem::take(&mut lock(&fake.answers).requests);
    (out, requests)
}

fn adapter(method: Method) -> HaproxyLb {
    HaproxyLb::new(
        endpoint(),
        Template::parse("app", PLACEHOLDERS).unwrap(),
        Template::parse("{host}", PLACEHOLDERS).unwrap(),
        method,
    )
    .with_timeout(Duration::from_secs(5))
}

fn endpoint() -> String {
    fake().path.to_str().unwrap().to_string()
}

fn unit(name: &str) -> Unit {
    Unit {
        index: 0,
        host: Arc::new(Host {
            name: name.to_string(),
            address: "127.0.0.1".to_string(),
            tags: Vec::new(),
            ssh_user: None,
            ssh_port: None,
            instance_id: None,
            instances: None,
        }),
        instance: 1,
        port: None,
    }
}

// ---------------------------------------------------------------------------
// The model and its rendering.

#[derive(Debug, Clone)]
struct Server {
    name: String,
    admin_bits: u32,
    op_state: u32,
    uweight: u32,
    iweight: u32,
    scur: u64,
    qcur: u64,
    status: String,
    /// Absent from `show servers state` (read from the status word alone).
    no_state_row: bool,
}

#[derive(Debug, Clone)]
struct Layout {
    /// `show servers state` columns, in order.
    state_cols: Vec<String>,
    /// `show stat` columns, in order.
    stat_cols: Vec<String>,
    /// HAProxy ends every CSV line with a comma.
    trailing_comma: bool,
    /// FRONTEND and BACKEND rows (`show stat -1 4 -1` asks for servers
    /// only, but they must be skipped if they come).
    proxy_rows: bool,
    /// Value of every column the adapter does not read.
    filler: Vec<String>,
}

const STATE_NEEDED: &[&str] = &[
    "be_name",
    "srv_name",
    "srv_op_state",
    "srv_admin_state",
    "srv_uweight",
    "srv_iweight",
];
const STATE_EXTRA: &[&str] = &[
    "be_id",
    "srv_id",
    "srv_addr",
    "srv_time_since_last_change",
    "srv_check_status",
    "srv_fqdn",
    "srv_port",
    "srvrecord",
    "srv_agent_port",
    "srv_future_column",
];
const STAT_NEEDED: &[&str] = &["pxname", "svname", "status", "scur"];
const STAT_OPTIONAL: &[&str] = &["qcur", "weight", "iweight"];
const STAT_EXTRA: &[&str] = &[
    "qmax",
    "smax",
    "slim",
    "stot",
    "bin",
    "bout",
    "check_status",
    "check_desc",
    "addr",
    "mode",
    "algo",
    "lastchg",
    "future_column",
];

fn server_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_.:-]{0,10}"
}

fn server() -> impl Strategy<Value = Server> {
    let bits = prop::sample::select(vec![
        0u32, 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x09, 0x18, 0x21, 0x48, 0x7f,
    ]);
    let count = prop_oneof![
        8 => 0u64..50,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX / 2 + 1),
        1 => any::<u64>(),
    ];
    let status = prop::sample::select(vec![
        "UP",
        "UP 1/3",
        "DOWN",
        "DOWN 1/2",
        "NOLB",
        "MAINT",
        "MAINT (via app/web-9)",
        "DRAIN",
        "DRAIN (agent)",
        "no check",
        "something new",
    ]);
    (
        server_name(),
        bits,
        prop_oneof![4 => 0u32..4, 1 => 4u32..1000],
        prop_oneof![0u32..300, Just(0)],
        prop_oneof![0u32..300, Just(0)],
        count.clone(),
        count,
        status,
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(name, admin_bits, op_state, uweight, iweight, scur, qcur, status, no_state_row)| {
                Server {
                    name,
                    admin_bits,
                    op_state,
                    uweight,
                    iweight,
                    scur,
                    qcur,
                    status: status.to_string(),
                    no_state_row,
                }
            },
        )
}

fn servers() -> impl Strategy<Value = Vec<Server>> {
    prop::collection::vec(server(), 1..6).prop_map(|mut v| {
        let mut seen = std::collections::HashSet::new();
        v.retain(|s| seen.insert(s.name.clone()));
        v
    })
}

fn layout() -> impl Strategy<Value = Layout> {
    // HAProxy's dumps begin with `# be_id` and `# pxname` (that is how the
    // adapter tells a dump from an error message); every other column may
    // come in any order.
    let state = prop::sample::subsequence(STATE_EXTRA.to_vec(), 0..=STATE_EXTRA.len())
        .prop_map(|extra| {
            STATE_NEEDED
                .iter()
                .chain(extra.iter())
                .filter(|c| **c != "be_id")
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
        .prop_map(|rest| first("be_id", rest));
    let stat = (
        prop::sample::subsequence(STAT_OPTIONAL.to_vec(), 0..=STAT_OPTIONAL.len()),
        prop::sample::subsequence(STAT_EXTRA.to_vec(), 0..=STAT_EXTRA.len()),
    )
        .prop_map(|(optional, extra)| {
            STAT_NEEDED
                .iter()
                .chain(optional.iter())
                .chain(extra.iter())
                .filter(|c| **c != "pxname")
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
        .prop_map(|rest| first("pxname", rest));
    let filler = prop::collection::vec(
        prop::sample::select(vec![
            "-",
            "0",
            "12",
            "127.0.0.1:8080",
            "http",
            "roundrobin",
            "L4OK",
            "\"Layer4 check passed, fine\"",
            "\"say \"\"hi\"\"\"",
            "",
        ]),
        STAT_EXTRA.len() + STATE_EXTRA.len(),
    )
    .prop_map(|v| v.into_iter().map(str::to_string).collect());
    (state, stat, any::<bool>(), any::<bool>(), filler).prop_map(
        |(state_cols, stat_cols, trailing_comma, proxy_rows, filler)| Layout {
            state_cols,
            stat_cols,
            trailing_comma,
            proxy_rows,
            filler,
        },
    )
}

fn first(col: &str, rest: Vec<String>) -> Vec<String> {
    std::iter::once(col.to_string()).chain(rest).collect()
}

impl Layout {
    fn filler_for(&self, col: &str) -> String {
        let i = STAT_EXTRA
            .iter()
            .chain(STATE_EXTRA)
            .position(|c| *c == col)
            .unwrap_or(0);
        self.filler[i].clone()
    }

    fn state_block(&self, servers: &[Server]) -> String {
        let mut s = format!("1\n# {}\n", self.state_cols.join(" "));
        for srv in servers.iter().filter(|s| !s.no_state_row) {
            let row: Vec<String> = self
                .state_cols
                .iter()
                .map(|c| match c.as_str() {
                    "be_name" => "app".to_string(),
                    "srv_name" => srv.name.clone(),
                    "srv_op_state" => srv.op_state.to_string(),
                    "srv_admin_state" => srv.admin_bits.to_string(),
                    "srv_uweight" => srv.uweight.to_string(),
                    "srv_iweight" => srv.iweight.to_string(),
                    // Space-separated: no spaces, no empty fields.
                    other => {
                        let f = self.filler_for(other);
                        if f.is_empty() || f.contains([' ', '"']) {
                            "-".to_string()
                        } else {
                            f
                        }
                    }
                })
                .collect();
            s.push_str(&row.join(" "));
            s.push('\n');
        }
        s
    }

    fn stat_block(&self, servers: &[Server]) -> String {
        let end = if self.trailing_comma { "," } else { "" };
        let mut s = format!("# {}{end}\n", self.stat_cols.join(","));
        let row = |px: &str, sv: &str, srv: Option<&Server>| -> String {
            let fields: Vec<String> = self
                .stat_cols
                .iter()
                .map(|c| match (c.as_str(), srv) {
                    ("pxname", _) => px.to_string(),
                    ("svname", _) => sv.to_string(),
                    ("status", Some(s)) => s.status.clone(),
                    ("scur", Some(s)) => s.scur.to_string(),
                    ("qcur", Some(s)) => s.qcur.to_string(),
                    ("weight", Some(s)) => s.uweight.to_string(),
                    ("iweight", Some(s)) => s.iweight.to_string(),
                    // FRONTEND/BACKEND rows are skipped whatever they hold.
                    ("status", None) => "OPEN".to_string(),
                    ("scur" | "qcur" | "weight" | "iweight", None) => "n/a".to_string(),
                    (other, _) => self.filler_for(other),
                })
                .collect();
            format!("{}{end}\n", fields.join(","))
        };
        if self.proxy_rows {
            s.push_str(&row("fe", "FRONTEND", None));
        }
        for srv in servers {
            s.push_str(&row("app", &srv.name, Some(srv)));
        }
        if self.proxy_rows {
            s.push_str(&row("app", "BACKEND", None));
        }
        s
    }

    /// The whole answer to `show servers state; show stat -1 4 -1`: each
    /// command's answer ends with an empty line.
    fn snapshot(&self, servers: &[Server]) -> String {
        format!(
            "{}\n{}\n",
            self.state_block(servers),
            self.stat_block(servers)
        )
    }

    fn has(&self, col: &str) -> bool {
        self.stat_cols.iter().any(|c| c == col)
    }
}

/// What HAProxy's answer says about `srv`: the one correct reading.
fn expected(layout: &Layout, srv: &Server) -> Option<MemberStatus> {
    let qcur = if layout.has("qcur") { srv.qcur } else { 0 };
    let sessions = srv.scur.checked_add(qcur)?;
    let (admin, oper, weight) = if srv.no_state_row {
        let (admin, oper) = from_word(&srv.status);
        let weight = layout.has("weight").then_some(srv.uweight);
        (admin, oper, weight)
    } else {
        let admin = if srv.admin_bits & (0x01 | 0x02 | 0x20 | 0x04) != 0 {
            AdminState::Maint
        } else if srv.admin_bits & (0x08 | 0x10) != 0 {
            AdminState::Drain
        } else {
            AdminState::Ready
        };
        let oper = match srv.op_state {
            1 | 2 => OperState::Up,
            0 | 3 => OperState::Down,
            _ => OperState::Unknown,
        };
        (admin, oper, Some(srv.uweight))
    };
    Some(MemberStatus {
        member: format!("app/{}", srv.name),
        admin,
        oper,
        weight,
        sessions: Some(sessions),
        raw: srv.status.clone(),
    })
}

/// `show stat`'s status word alone (admin maint and drain hide part of the
/// truth there).
fn from_word(word: &str) -> (AdminState, OperState) {
    match word.split_whitespace().next().unwrap_or("") {
        "MAINT" => (AdminState::Maint, OperState::Down),
        "DRAIN" => (AdminState::Drain, OperState::Up),
        "UP" => (AdminState::Ready, OperState::Up),
        "no" if word == "no check" => (AdminState::Ready, OperState::Up),
        "DOWN" | "NOLB" => (AdminState::Ready, OperState::Down),
        _ => (AdminState::Ready, OperState::Unknown),
    }
}

// ---------------------------------------------------------------------------
// Damage.

#[derive(Debug, Clone)]
enum Damage {
    /// Cut the answer at this byte.
    Truncate(prop::sample::Index),
    /// Cut this many bytes off the end (inside the last row).
    CutTail(usize),
    /// Drop a column the adapter needs from header and rows alike.
    DropNeeded {
        stat: bool,
        col: prop::sample::Index,
    },
    /// In one row of one block: drop, duplicate or insert a field.
    Field {
        stat: bool,
        row: prop::sample::Index,
        field: prop::sample::Index,
        how: u8,
    },
    /// Bytes that are not UTF-8 (or control characters) somewhere.
    Bytes(prop::sample::Index, Vec<u8>),
    CrLf,
    /// Only one of the two answers.
    OneBlock {
        stat: bool,
    },
    Swapped,
    Empty,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
        2 => (1usize..24).prop_map(Damage::CutTail),
        2 => (any::<bool>(), any::<prop::sample::Index>())
            .prop_map(|(stat, col)| Damage::DropNeeded { stat, col }),
        3 => (any::<bool>(), any::<prop::sample::Index>(), any::<prop::sample::Index>(), 0u8..3)
            .prop_map(|(stat, row, field, how)| Damage::Field { stat, row, field, how }),
        2 => (
            any::<prop::sample::Index>(),
            prop::collection::vec(
                prop_oneof![Just(0xffu8), Just(0xc3), Just(0x80), Just(0), Just(b'\r'), any::<u8>()],
                1..4
            )
        )
            .prop_map(|(at, b)| Damage::Bytes(at, b)),
        1 => Just(Damage::CrLf),
        1 => any::<bool>().prop_map(|stat| Damage::OneBlock { stat }),
        1 => Just(Damage::Swapped),
        1 => Just(Damage::Empty),
    ]
}

/// How the damaged answer must read.
#[derive(Debug)]
enum Expect {
    /// Every unit: an error, and it names `this` (when given).
    AllErr(Option<String>),
    /// Every unit: an error or exactly the correct reading.
    ErrOrExact,
    /// Every error well-formed; a reading may be anything (bytes inside a
    /// name or a status word change what the answer says).
    Any,
    /// Exactly the correct reading.
    Exact,
}

fn damaged(layout: &Layout, servers: &[Server], d: &Damage) -> (Vec<u8>, Expect) {
    let state = layout.state_block(servers);
    let stat = layout.stat_block(servers);
    let whole = layout.snapshot(servers);
    match d {
        Damage::Truncate(at) => {
            let bytes = whole.as_bytes();
            (
                bytes[..at.index(bytes.len() + 1)].to_vec(),
                Expect::ErrOrExact,
            )
        }
        Damage::CutTail(n) => {
            let bytes = whole.as_bytes();
            (
                bytes[..bytes.len().saturating_sub(*n)].to_vec(),
                Expect::ErrOrExact,
            )
        }
        Damage::DropNeeded { stat: in_stat, col } => {
            let (needed, block, sep) = if *in_stat {
                (STAT_NEEDED, &stat, ',')
            } else {
                (STATE_NEEDED, &state, ' ')
            };
            let name = needed[col.index(needed.len())];
            let cols = if *in_stat {
                &layout.stat_cols
            } else {
                &layout.state_cols
            };
            let pos = cols.iter().position(|c| c == name).unwrap();
            let cut: String = block
                .lines()
                .map(|l| {
                    if l.starts_with('#') || l.contains(sep) {
                        let (head, body) = match l.strip_prefix("# ") {
                            Some(b) => ("# ", b),
                            None => ("", l),
                        };
                        let mut f = split_fields(body, sep);
                        if pos < f.len() {
                            f.remove(pos);
                        }
                        format!("{head}{}\n", f.join(&sep.to_string()))
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            let text = if *in_stat {
                format!("{state}\n{cut}\n")
            } else {
                format!("{cut}\n{stat}\n")
            };
            // Without its first column a dump is not recognised as one:
            // then the error names the request, not the column.
            let needle = (pos > 0).then(|| name.to_string());
            (text.into_bytes(), Expect::AllErr(needle))
        }
        Damage::Field {
            stat: in_stat,
            row,
            field,
            how,
        } => {
            let (block, sep) = if *in_stat {
                (&stat, ',')
            } else {
                (&state, ' ')
            };
            let mut lines: Vec<String> = block.lines().map(str::to_string).collect();
            let rows: Vec<usize> = (0..lines.len())
                .filter(|&i| !lines[i].starts_with('#') && lines[i].contains(sep))
                .collect();
            if rows.is_empty() {
                return (whole.into_bytes(), Expect::Exact);
            }
            let r = rows[row.index(rows.len())];
            let mut f = split_fields(&lines[r], sep);
            let at = field.index(f.len());
            match how {
                0 => {
                    f.remove(at);
                }
                1 => {
                    let v = f[at].clone();
                    f.insert(at, v);
                }
                _ => f.insert(at, "7".to_string()),
            }
            lines[r] = f.join(&sep.to_string());
            let block = lines.join("\n") + "\n";
            let text = if *in_stat {
                format!("{state}\n{block}\n")
            } else {
                format!("{block}\n{stat}\n")
            };
            (text.into_bytes(), Expect::ErrOrExact)
        }
        Damage::Bytes(at, bytes) => {
            let mut b = whole.into_bytes();
            let at = at.index(b.len() + 1);
            b.splice(at..at, bytes.iter().copied());
            (b, Expect::Any)
        }
        Damage::CrLf => (whole.replace('\n', "\r\n").into_bytes(), Expect::ErrOrExact),
        Damage::OneBlock { stat: true } => (format!("{stat}\n").into_bytes(), Expect::AllErr(None)),
        Damage::OneBlock { stat: false } => {
            (format!("{state}\n").into_bytes(), Expect::AllErr(None))
        }
        Damage::Swapped => (
            format!("{stat}\n{state}\n").into_bytes(),
            Expect::AllErr(None),
        ),
        Damage::Empty => (Vec::new(), Expect::AllErr(None)),
    }
}

/// Split a row the way it was joined (CSV quotes kept whole).
fn split_fields(line: &str, sep: char) -> Vec<String> {
    if sep == ' ' {
        return line.split(' ').map(str::to_string).collect();
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}
