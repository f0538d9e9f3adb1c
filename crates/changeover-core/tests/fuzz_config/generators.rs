use super::*;

/// TOML values of every type, with the edges that matter to the checks.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "0",
            "-1",
            "1",
            "65535",
            "65536",
            "9223372036854775807",
            "-9223372036854775808",
            "99999999999999999999",
            "0x7fffffffffffffff",
            "1_000_000",
        ])
        .prop_map(str::to_string),
        any::<f64>().prop_map(|f| {
            if f.is_finite() {
                format!("{f:?}")
            } else {
                "nan".to_string()
            }
        }),
        prop::sample::select(vec![
            "nan", "+inf", "-inf", "1e308", "-1e308", "5e-324", "-0.0", "0.0", "100.0", "100.01"
        ])
        .prop_map(str::to_string),
        any::<bool>().prop_map(|b| b.to_string()),
        string_value(),
        prop::sample::select(vec![
            "[]",
            "[1, \"10%\", \"100%\"]",
            "[0]",
            "[-1]",
            "[[]]",
            "[\"a\", 1]",
            "[\"web-1\", \"nope\"]",
            "{}",
            "{ a = 1 }",
            "{ kind = \"none\" }",
            "1979-05-27T07:32:00Z",
            "07:32:00",
            "1979-05-27",
        ])
        .prop_map(str::to_string),
    ]
}

/// Template text as written in the file: escapes (which are longer in the
/// file than in the value), raw multi-byte characters, placeholders known
/// and unknown, literal braces.
fn template_source() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "\\\\",
        "\\t",
        "\\n",
        "\\\"",
        "\\u00e9",
        "\\U0001F980",
        "\\u0000",
        "é",
        "中",
        "🦀",
        "e\u{301}",
        "{nope}",
        "{verison}",
        "{version}",
        "{host}",
        "{{",
        "}}",
        "{",
        "}",
        "$",
        "x",
        " ",
    ]);
    prop::collection::vec(piece, 1..6).prop_map(|v| v.concat())
}

/// Numbers at the edges of every range check.
fn number_edge() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-1",
            "-9223372036854775808",
            "9223372036854775807",
            "9223372036854775806",
            "4294967296",
            "65535",
            "65536",
            "1001",
            "-0",
            "1e308",
            "-1.5",
            "nan",
            "inf",
        ])
        .prop_map(str::to_string),
        any::<i64>().prop_map(|n| n.to_string()),
    ]
}

/// Strings: the edges of durations, percentages, templates and names, and
/// hostile text written as TOML escapes.
fn string_value() -> impl Strategy<Value = String> {
    let edges = prop::sample::select(vec![
        "",
        " ",
        "-5s",
        "-1ms",
        "0s",
        "0",
        "1ns",
        "5 m",
        "1h 30m",
        "99999999999999999999s",
        "18446744073709551615s",
        "584942417356y",
        "1e400s",
        "25%",
        "-10%",
        "0%",
        "100%",
        "101%",
        "1e400%",
        "NaN%",
        "inf%",
        "%",
        "{version}",
        "{bogus}",
        "{verison} {host}",
        "{port}",
        "{",
        "}",
        "{{",
        "{{host}}",
        "${HOME}",
        "http://",
        "http://{address}:8080/{bogus}",
        "https://user:secret@example.com/x?token=1",
        "/",
        "127.0.0.1:0",
        "[::1]:99999",
        "$(touch /tmp/pwned)",
        "a,b",
        "web 1",
        "..",
        "../../etc",
        "é",
        "🦀",
    ])
    .prop_map(|s| format!("\"{}\"", escape(s)));
    let hostile = hostile_text().prop_map(|s| format!("\"{}\"", escape(&s)));
    let literal = "[a-z{}$% ]{0,12}".prop_map(|s| format!("'{s}'"));
    let multiline = hostile_text().prop_map(|s| format!("\"\"\"\n{}\"\"\"", escape(&s)));
    prop_oneof![4 => edges, 3 => hostile, 1 => literal, 1 => multiline]
}

/// Text with control characters, unicode of every width, quotes and shell
/// metacharacters, placeholders among them.
fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<char>().prop_map(|c| c.to_string()),
        prop::sample::select(vec![
            "\0",
            "\t",
            "\n",
            "\r",
            "\x1b[31m",
            "\x7f",
            "\u{85}",
            "\u{200b}",
            "\u{202e}",
            "\u{feff}",
            "é",
            "e\u{301}",
            "ß",
            "中文",
            "🦀",
            "👩‍👩‍👧",
            "\u{10ffff}",
            "\"",
            "'",
            "\\",
            "`",
            "$(",
            ")",
            ";",
            "|",
            "&",
            "{",
            "}",
            "{version}",
            "{host}",
            "{nope}",
            "%",
            " ",
        ])
        .prop_map(str::to_string),
        "[a-z0-9]{1,6}",
        prop::sample::select(vec![
            "{nope}",
            "{verison}",
            "{x}",
            "{version}",
            "{{x}}",
            "${x}"
        ])
        .prop_map(str::to_string),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

/// Write `s` inside a TOML basic string: some characters as escapes, others
/// raw (control characters raw are invalid TOML, which is a case too).
fn escape(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' if i % 2 == 0 => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 && i % 3 != 0 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if !c.is_ascii() && i % 2 == 1 => out.push_str(&format!("\\U{:08x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Keys of every section, so renamed and inserted keys hit real ones.
const KEYS: &[&str] = &[
    "app",
    "name",
    "address",
    "tags",
    "ssh_user",
    "ssh_port",
    "kind",
    "scope",
    "socket",
    "socket_command",
    "backend",
    "server",
    "method",
    "listen",
    "member",
    "mode",
    "timeout",
    "on_timeout",
    "interval",
    "command",
    "run",
    "local",
    "http",
    "tcp",
    "expect_status",
    "deadline",
    "healthy_threshold",
    "batch",
    "window",
    "groups",
    "max_failures",
    "pause",
    "on_failure",
    "percent",
    "pointer",
    "lock",
    "partial",
    "lb_takeout",
    "count",
    "first_port",
    "max_connections",
    "state_dir",
    "endpoints",
    "prefix",
    "lock_ttl",
    "password_env",
    "rps",
    "url",
    "version_command",
    "bogus_key",
    "\"quoted key\"",
    "\"🦀\"",
    "a.b.c",
];

const TABLES: &[&str] = &[
    "[ssh]",
    "[[hosts]]",
    "[instances]",
    "[[load_balancers]]",
    "[drain]",
    "[deploy]",
    "[health]",
    "[strategy]",
    "[targets.x]",
    "[targets.\"bad name/..\"]",
    "[targets.x.strategy]",
    "[store]",
    "[witness]",
    "[status]",
    "[hosts]",
    "[[drain]]",
    "[bogus]",
];

#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Retype(usize, String),
    Rename(usize, String),
    /// Insert text into the n-th string value, after `at` characters.
    Inject(usize, usize, String),
    /// Insert TOML source text (escapes, raw multi-byte characters,
    /// placeholders) into the n-th template, after `at` characters.
    Template(usize, usize, String),
    /// Replace the n-th number with an edge (huge, negative, zero).
    Number(usize, String),
    /// A new line: a key with a value, or a table header.
    Insert(usize, String),
    /// One byte replaced (the text is read back lossily).
    Byte(usize, u8),
}

pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    let line = any::<prop::sample::Index>();
    let new_line = prop_oneof![
        (prop::sample::select(KEYS), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        prop::sample::select(TABLES).prop_map(str::to_string),
        hostile_text(),
    ];
    prop_oneof![
        2 => line.clone().prop_map(|i| Mutation::Delete(i.index(1 << 16))),
        1 => line.clone().prop_map(|i| Mutation::Duplicate(i.index(1 << 16))),
        1 => (line.clone(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::Swap(a.index(1 << 16), b.index(1 << 16))),
        4 => (line.clone(), value()).prop_map(|(i, v)| Mutation::Retype(i.index(1 << 16), v)),
        1 => (line.clone(), prop::sample::select(KEYS))
            .prop_map(|(i, k)| Mutation::Rename(i.index(1 << 16), k.to_string())),
        4 => (line.clone(), 0usize..40, hostile_text())
            .prop_map(|(i, at, t)| Mutation::Inject(i.index(1 << 16), at, t)),
        3 => (line.clone(), 0usize..60, template_source())
            .prop_map(|(i, at, t)| Mutation::Template(i.index(1 << 16), at, t)),
        2 => (line.clone(), number_edge())
            .prop_map(|(i, v)| Mutation::Number(i.index(1 << 16), v)),
        2 => (line.clone(), new_line).prop_map(|(i, l)| Mutation::Insert(i.index(1 << 16), l)),
        1 => (line, any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i.index(1 << 16), b)),
    ]
}

pub(crate) fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let n = lines.len();
    match m {
        Mutation::Delete(i) => {
            lines.remove(i % n);
        }
        Mutation::Duplicate(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Mutation::Swap(a, b) => lines.swap(a % n, b % n),
        Mutation::Retype(i, v) => {
            let l = &mut lines[i % n];
            if let Some((k, _)) = l.split_once('=') {
                *l = format!("{}= {v}", k);
            } else {
                *l = format!("{l} = {v}");
            }
        }
        Mutation::Rename(i, k) => {
            let l = &mut lines[i % n];
            if let Some((_, v)) = l.split_once('=') {
                *l = format!("{k} ={v}");
            }
        }
        Mutation::Inject(i, at, t) => {
            // Inside a string value when there is one, else anywhere.
            let strings: Vec<usize> = (0..n).filter(|&k| lines[k].contains('"')).collect();
            let k = if strings.is_empty() {
                i % n
            } else {
                strings[i % strings.len()]
            };
            let l = &mut lines[k];
            let start = l.find('"').map_or(0, |q| q + 1);
            let offsets: Vec<usize> = l[start..]
                .char_indices()
                .map(|(o, _)| start + o)
                .chain([l.len()])
                .collect();
            let pos = offsets[at % offsets.len()];
            l.insert_str(pos, &escape(t));
        }
        Mutation::Template(i, at, t) => {
            let templates: Vec<usize> = (0..n)
                .filter(|&k| lines[k].contains('"') && lines[k].contains('{'))
                .collect();
            if let Some(&k) = templates.get(i % templates.len().max(1)) {
                let l = &mut lines[k];
                let start = l.find('"').map_or(0, |q| q + 1);
                let end = l.rfind('"').filter(|e| *e >= start).unwrap_or(l.len());
                let offsets: Vec<usize> = l[start..end]
                    .char_indices()
                    .map(|(o, _)| start + o)
                    .chain([end])
                    .collect();
                l.insert_str(offsets[at % offsets.len()], t);
            }
        }
        Mutation::Number(i, v) => {
            let numbers: Vec<usize> = (0..n)
                .filter(|&k| {
                    lines[k]
                        .split_once('=')
                        .is_some_and(|(_, v)| v.trim().starts_with(|c: char| c.is_ascii_digit()))
                })
                .collect();
            if let Some(&k) = numbers.get(i % numbers.len().max(1)) {
                let key = lines[k].split_once('=').map(|(k, _)| k.to_string());
                lines[k] = format!("{}= {v}", key.unwrap_or_default());
            }
        }
        Mutation::Insert(i, new) => lines.insert(i % (n + 1), new.clone()),
        Mutation::Byte(i, b) => {
            let joined = lines.join("\n");
            let mut bytes = joined.into_bytes();
            if !bytes.is_empty() {
                let at = i % bytes.len();
                bytes[at] = *b;
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    lines.join("\n")
}

/// Cut the text at byte `at` (not only at character boundaries: a cut
/// inside a character reads back as U+FFFD, as a truncated file would).
pub(crate) fn truncate(text: &str, at: usize) -> String {
    let bytes = text.as_bytes();
    String::from_utf8_lossy(&bytes[..at.min(bytes.len())]).into_owned()
}

/// TOML-shaped noise: headers, keys, values, punctuation.
pub(crate) fn token_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(TABLES).prop_map(|t| format!("\n{t}\n")),
        prop::sample::select(KEYS).prop_map(str::to_string),
        value(),
        prop::sample::select(vec![
            " = ", "=", "\n", "[", "]", "[[", "]]", "{", "}", ",", ".", "\"", "'", "\"\"\"", "#",
            " ", "\t", "\r\n",
        ])
        .prop_map(str::to_string),
    ];
    prop::collection::vec(token, 0..60).prop_map(|v| v.concat())
}

pub(crate) fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
