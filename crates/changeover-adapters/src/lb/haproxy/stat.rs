use super::endpoint::{message_of, split_answers};
use super::{abbreviate, tail, HaproxyLb, Member};
use changeover_core::lb::{AdminState, LbError, OperState};
use std::collections::HashMap;

impl HaproxyLb {
    /// Both status views, in one exchange (shared between callers by
    /// [`HaproxyLb::snapshot`]).
    pub(super) async fn read_snapshot(&self) -> Result<HashMap<Member, ServerView>, LbError> {
        const REQUEST: &str = "show servers state; show stat -1 4 -1";
        let answer = self.exchange(REQUEST).await?;
        let blocks = split_answers(&answer);
        let protocol = |detail: String| LbError::Protocol {
            endpoint: self.endpoint_text.clone(),
            request: REQUEST.to_string(),
            detail,
        };
        // Anything not shaped like the dumps is HAProxy saying no (e.g.
        // "Permission denied" on a restricted socket).
        let mut dumps = Vec::new();
        for (i, marker, request) in [
            (0, "# be_id", "show servers state"),
            (1, "# pxname", "show stat -1 4 -1"),
        ] {
            match blocks.get(i) {
                Some(block) if block.lines().any(|l| l.starts_with(marker)) => dumps.push(block),
                Some(block) if !block.trim().is_empty() => {
                    return Err(LbError::Refused {
                        endpoint: self.endpoint_text.clone(),
                        request: request.to_string(),
                        answer: message_of(block),
                    })
                }
                _ => {
                    return Err(protocol(format!(
                        "no answer to `{request}` in: {}",
                        abbreviate(answer.trim())
                    )))
                }
            }
        }
        // Every answer ends with an empty line; without it the answer was
        // cut off, and a cut inside the last field would still parse.
        if !(answer.ends_with("\n\n") || answer.ends_with("\n\r\n")) {
            return Err(protocol(format!(
                "the answer to `show stat` is cut off (no empty line at its end): …{}",
                tail(&answer)
            )));
        }
        let (state_block, stat_block) = (dumps[0], dumps[1]);
        let states = parse_servers_state(state_block).map_err(protocol)?;
        let stats = parse_stat_csv(stat_block).map_err(protocol)?;
        Ok(merge(stats, states))
    }
}

/// One server row of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatRow {
    backend: String,
    server: String,
    status: String,
    weight: Option<u32>,
    iweight: Option<u32>,
    sessions: u64,
}

/// One server row of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StateRow {
    backend: String,
    server: String,
    op_state: u32,
    admin_state: u32,
    uweight: u32,
    iweight: u32,
}

/// What `status` reports about a server, from both views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServerView {
    pub(super) admin: AdminState,
    pub(super) oper: OperState,
    pub(super) weight: Option<u32>,
    pub(super) iweight: Option<u32>,
    pub(super) sessions: u64,
    pub(super) raw: String,
}

// `srv_admin_state` bits, from HAProxy's server-t.h.
const ADMF_MAINT: u32 = 0x01 | 0x02 | 0x20; // forced, inherited, DNS resolution
const ADMF_CMAINT: u32 = 0x04; // `disabled` in the config
const ADMF_DRAIN: u32 = 0x08 | 0x10; // forced, inherited

/// Parse `show stat` CSV by header name; only server rows are kept.
fn parse_stat_csv(text: &str) -> Result<Vec<StatRow>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix('#'))
        .ok_or_else(|| "show stat: no `# pxname,...` header line".to_string())?;
    let names = csv_fields(header.trim_start());
    let col = |name: &str| names.iter().position(|n| n == name);
    let need = |name: &str| col(name).ok_or_else(|| format!("show stat: no `{name}` column"));
    let (px, sv, status) = (need("pxname")?, need("svname")?, need("status")?);
    let (scur, qcur) = (need("scur")?, col("qcur"));
    let (weight, iweight) = (col("weight"), col("iweight"));

    let mut rows = Vec::new();
    for line in lines {
        let fields = csv_fields(line);
        // A row cut short or with a field too many would put values under
        // the wrong columns (a lost scur reads as 0 sessions).
        if fields.len() != names.len() {
            return Err(format!(
                "show stat: a row has {} fields, the header {}: {}",
                fields.len(),
                names.len(),
                abbreviate(line)
            ));
        }
        let get = |i: Option<usize>| i.and_then(|i| fields.get(i)).map_or("", |s| s.as_str());
        let server = get(Some(sv));
        if server == "FRONTEND" || server == "BACKEND" {
            continue;
        }
        let number = |i: Option<usize>| -> Result<u64, String> {
            let v = get(i);
            if v.is_empty() {
                return Ok(0);
            }
            v.parse()
                .map_err(|_| format!("show stat: `{v}` is not a number (server {server})"))
        };
        rows.push(StatRow {
            backend: get(Some(px)).to_string(),
            server: server.to_string(),
            status: get(Some(status)).to_string(),
            weight: get(weight).parse().ok(),
            iweight: get(iweight).parse().ok(),
            sessions: number(Some(scur))?
                .checked_add(number(qcur)?)
                .ok_or_else(|| format!("show stat: scur + qcur overflow (server {server})"))?,
        });
    }
    Ok(rows)
}

/// Split one CSV line; HAProxy quotes fields holding a comma or a quote.
fn csv_fields(line: &str) -> Vec<String> {
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

/// Parse `show servers state` (a format version line, a `# ` header, rows
/// separated by spaces) by header name.
fn parse_servers_state(text: &str) -> Result<Vec<StateRow>, String> {
    let mut lines = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .skip_while(|l| !l.starts_with('#'));
    let header = lines
        .next()
        .ok_or_else(|| "show servers state: no `# be_id ...` header line".to_string())?;
    let names: Vec<&str> = header.trim_start_matches('#').split_whitespace().collect();
    let need = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| format!("show servers state: no `{name}` column"))
    };
    let (be, sv) = (need("be_name")?, need("srv_name")?);
    let (op, admin) = (need("srv_op_state")?, need("srv_admin_state")?);
    let (uw, iw) = (need("srv_uweight")?, need("srv_iweight")?);

    let mut rows = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != names.len() {
            return Err(format!(
                "show servers state: a row has {} fields, the header {}: {}",
                fields.len(),
                names.len(),
                abbreviate(line)
            ));
        }
        let get = |i: usize| fields.get(i).copied().unwrap_or("");
        let number = |i: usize, name: &str| -> Result<u32, String> {
            get(i).parse().map_err(|_| {
                format!(
                    "show servers state: {name} `{}` is not a number (server {}/{})",
                    get(i),
                    get(be),
                    get(sv)
                )
            })
        };
        rows.push(StateRow {
            backend: get(be).to_string(),
            server: get(sv).to_string(),
            op_state: number(op, "srv_op_state")?,
            admin_state: number(admin, "srv_admin_state")?,
            uweight: number(uw, "srv_uweight")?,
            iweight: number(iw, "srv_iweight")?,
        });
    }
    Ok(rows)
}

/// Read the status word of `show stat` alone, for when `show servers state`
/// has no row for the server. Admin maint and drain hide part of the truth
/// there (see the module docs).
fn states_from_word(word: &str) -> (AdminState, OperState) {
    let head = word.split_whitespace().next().unwrap_or("");
    match head {
        "MAINT" => (AdminState::Maint, OperState::Down),
        // "DRAIN" only shows while the server runs.
        "DRAIN" => (AdminState::Drain, OperState::Up),
        "UP" => (AdminState::Ready, OperState::Up),
        // No health check: HAProxy sends traffic to it as if it were up.
        "no" if word == "no check" => (AdminState::Ready, OperState::Up),
        // NOLB: the server asked for no new traffic (disable-on-404, agent),
        // so it is not serving in the sense `is_serving` means.
        "DOWN" | "NOLB" => (AdminState::Ready, OperState::Down),
        _ => (AdminState::Ready, OperState::Unknown),
    }
}

fn admin_from_bits(bits: u32) -> AdminState {
    if bits & (ADMF_MAINT | ADMF_CMAINT) != 0 {
        AdminState::Maint
    } else if bits & ADMF_DRAIN != 0 {
        AdminState::Drain
    } else {
        AdminState::Ready
    }
}

/// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping (NOLB).
fn oper_from_state(op: u32) -> OperState {
    match op {
        1 | 2 => OperState::Up,
        0 | 3 => OperState::Down,
        _ => OperState::Unknown,
    }
}

fn merge(stats: Vec<StatRow>, states: Vec<StateRow>) -> HashMap<Member, ServerView> {
    let mut states: HashMap<Member, StateRow> = states
        .into_iter()
        .map(|s| {
            let key = Member {
                backend: s.backend.clone(),
                server: s.server.clone(),
            };
            (key, s)
        })
        .collect();
    stats
        .into_iter()
        .map(|stat| {
            let key = Member {
                backend: stat.backend,
                server: stat.server,
            };
            let view = match states.remove(&key) {
                Some(state) => ServerView {
                    admin: admin_from_bits(state.admin_state),
                    oper: oper_from_state(state.op_state),
                    // The user weight, not show stat's effective weight: slow
                    // start scales the latter, and putting back a scaled
                    // weight would keep the server light for good.
                    weight: Some(state.uweight),
                    iweight: Some(state.iweight),
                    sessions: stat.sessions,
                    raw: stat.status,
                },
                None => {
                    let (admin, oper) = states_from_word(&stat.status);
                    ServerView {
                        admin,
                        oper,
                        weight: stat.weight,
                        iweight: stat.iweight,
                        sessions: stat.sessions,
                        raw: stat.status,
                    }
                }
            };
            (key, view)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real `show stat -1 4 -1` header from HAProxy 2.6 (trimmed after the
    /// columns that matter, which HAProxy never does, but parsing must not
    /// care).
    const STAT_26: &str = "\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,
app,web-1,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,1,1,,1,3,1,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,Connection refused,,0,0,0,0,,,,Layer4 connection problem,,1,1,0,,,,127.0.0.1:1,,http,,
app,web-2,2,0,3,0,,0,0,0,,0,,0,0,0,0,UP 1/3,37,1,0,1,1,1,1,,1,3,2,,0,,2,0,,0,L4OK,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,\"Layer4 check passed, fine\",,1,1,0,,,,127.0.0.1:2,,http,,
app,web-3,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,5,1,0,,,2,,,1,3,3,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.0.0.1:3,,http,,
app,BACKEND,0,0,0,0,999,0,0,0,0,0,,0,0,0,0,UP,5,1,0,,0,2,0,,1,3,0,,0,,1,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,0,0,0,0,-1,,,0,0,0,0,,,,,,,,,,,,,,http,roundrobin,
";

    const STATE_26: &str = "\
1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 app 1 web-1 127.0.0.1 0 8 0 1 38 8 2 0 6 0 0 0 - 1 - 0 0 - - 0
3 app 2 web-2 127.0.0.1 2 0 37 37 36 8 2 0 6 0 0 0 - 2 - 0 0 - - 0
3 app 3 web-3 127.0.0.1 0 1 5 5 37 1 0 2 0 0 0 0 - 3 - 0 0 - - 0
";

    #[test]
    fn stat_rows_by_header_name() {
        let rows = parse_stat_csv(STAT_26).unwrap();
        assert_eq!(rows.len(), 3, "FRONTEND/BACKEND rows are skipped");
        assert_eq!(
            rows[1],
            StatRow {
                backend: "app".into(),
                server: "web-2".into(),
                status: "UP 1/3".into(),
                weight: Some(37),
                iweight: None,
                sessions: 5,
            }
        );
        assert_eq!(rows[2].status, "MAINT");
    }

    #[test]
    fn stat_columns_in_any_order() {
        let text = "# status,qcur,iweight,svname,weight,scur,pxname\n\
                    MAINT (via other/web-1),1,10,web-1,3,4,app\n\
                    DRAIN (agent),,10,web-2,3,,app\n";
        let rows = parse_stat_csv(text).unwrap();
        assert_eq!(rows[0].backend, "app");
        assert_eq!(rows[0].server, "web-1");
        assert_eq!(rows[0].status, "MAINT (via other/web-1)");
        assert_eq!(rows[0].sessions, 5);
        assert_eq!(rows[0].weight, Some(3));
        assert_eq!(rows[0].iweight, Some(10));
        assert_eq!(rows[1].sessions, 0, "empty counters count as 0");
    }

    #[test]
    fn stat_without_needed_column_is_an_error() {
        let err = parse_stat_csv("# pxname,svname,status\napp,web-1,UP\n").unwrap_err();
        assert!(err.contains("scur"), "{err}");
        let err = parse_stat_csv("Permission denied\n").unwrap_err();
        assert!(err.contains("header"), "{err}");
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(
            csv_fields(r#"a,"b, c","say ""hi""",,"#),
            vec!["a", "b, c", r#"say "hi""#, "", ""]
        );
    }

    #[test]
    fn status_words() {
        use AdminState::*;
        use OperState::*;
        for (word, expect) in [
            ("UP", (Ready, Up)),
            ("UP 1/3", (Ready, Up)),
            ("no check", (Ready, Up)),
            ("DOWN", (Ready, Down)),
            ("DOWN 1/2", (Ready, Down)),
            ("DOWN (agent)", (Ready, Down)),
            ("NOLB", (Ready, Down)),
            ("NOLB 1/2", (Ready, Down)),
            ("MAINT", (Maint, Down)),
            ("MAINT (via app/web-9)", (Maint, Down)),
            ("MAINT (resolution)", (Maint, Down)),
            ("DRAIN", (Drain, Up)),
            ("DRAIN (agent)", (Drain, Up)),
            ("DRAIN 1/3", (Drain, Up)),
            ("something new", (Ready, Unknown)),
        ] {
            assert_eq!(states_from_word(word), expect, "{word}");
        }
    }

    #[test]
    fn servers_state_by_header_name() {
        let rows = parse_servers_state(STATE_26).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0],
            StateRow {
                backend: "app".into(),
                server: "web-1".into(),
                op_state: 0,
                admin_state: 8,
                uweight: 0,
                iweight: 1,
            }
        );
        let reordered =
            "1\n# srv_iweight srv_name srv_uweight be_name srv_admin_state srv_op_state\n\
                         7 web-9 3 api 0 2\n";
        let rows = parse_servers_state(reordered).unwrap();
        assert_eq!(rows[0].server, "web-9");
        assert_eq!((rows[0].uweight, rows[0].iweight), (3, 7));
    }

    #[test]
    fn merged_view_sees_drain_behind_down() {
        let views = merge(
            parse_stat_csv(STAT_26).unwrap(),
            parse_servers_state(STATE_26).unwrap(),
        );
        let get = |s: &str| {
            views[&Member {
                backend: "app".into(),
                server: s.into(),
            }]
                .clone()
        };
        // Shown as "DOWN", but drained and at weight 0.
        let web1 = get("web-1");
        assert_eq!(
            (web1.admin, web1.oper),
            (AdminState::Drain, OperState::Down)
        );
        assert_eq!((web1.weight, web1.iweight), (Some(0), Some(1)));
        assert_eq!(web1.raw, "DOWN");
        let web2 = get("web-2");
        assert_eq!((web2.admin, web2.oper), (AdminState::Ready, OperState::Up));
        assert_eq!(web2.sessions, 5);
        let web3 = get("web-3");
        assert_eq!(
            (web3.admin, web3.oper),
            (AdminState::Maint, OperState::Down)
        );
        assert_eq!(web3.weight, Some(5), "maintenance keeps the user weight");
    }

    #[test]
    fn admin_bits() {
        assert_eq!(admin_from_bits(0), AdminState::Ready);
        assert_eq!(
            admin_from_bits(0x40),
            AdminState::Ready,
            "fqdn changed only"
        );
        assert_eq!(admin_from_bits(0x08), AdminState::Drain);
        assert_eq!(admin_from_bits(0x10), AdminState::Drain);
        assert_eq!(admin_from_bits(0x05), AdminState::Maint);
        assert_eq!(admin_from_bits(0x09), AdminState::Maint, "maint wins");
        assert_eq!(admin_from_bits(0x20), AdminState::Maint);
    }
}
