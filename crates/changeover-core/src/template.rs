//! `{name}` templates: hand-rolled so shell braces stay literal.
//!
//! A placeholder is `{` + a lower-case identifier + `}` not preceded by `$`
//! (so `${HOME}` and `awk '{print $1}'` pass through untouched). `{{` and
//! `}}` are literal braces. Unknown placeholders are rejected at validation
//! time, with the span of the offending name.

use crate::unit::Unit;
use std::fmt;

/// The placeholders SPEC.md defines.
pub const PLACEHOLDERS: &[&str] = &[
    "host",
    "address",
    "instance",
    "port",
    "unit",
    "version",
    "previous_version",
    "target",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

/// An unknown placeholder: its name and byte range within the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPlaceholder {
    pub name: String,
    pub start: usize,
    pub end: usize,
}

impl Template {
    /// Parse `source`, accepting only placeholders in `allowed`.
    pub fn parse(source: &str, allowed: &[&str]) -> Result<Template, UnknownPlaceholder> {
        let bytes = source.as_bytes();
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if c == b'{' && bytes.get(i + 1) == Some(&b'{') {
                lit.push('{');
                i += 2;
                continue;
            }
            if c == b'}' && bytes.get(i + 1) == Some(&b'}') {
                lit.push('}');
                i += 2;
                continue;
            }
            if c == b'{' && (i == 0 || bytes[i - 1] != b'$') {
                if let Some(len) = ident_len(&bytes[i + 1..]) {
                    if bytes.get(i + 1 + len) == Some(&b'}') {
                        let name = &source[i + 1..i + 1 + len];
                        if !allowed.contains(&name) {
                            return Err(UnknownPlaceholder {
                                name: name.to_string(),
                                start: i,
                                end: i + len + 2,
                            });
                        }
                        if !lit.is_empty() {
                            pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                        }
                        pieces.push(Piece::Var(name.to_string()));
                        i += len + 2;
                        continue;
                    }
                }
            }
            // Push the whole UTF-8 character starting here.
            let ch = source[i..].chars().next().expect("in bounds");
            lit.push(ch);
            i += ch.len_utf8();
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template {
            source: source.to_string(),
            pieces,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Names of the placeholders used.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(v.as_str()),
            Piece::Lit(_) => None,
        })
    }

    /// Substitute without quoting (URLs, member names).
    pub fn render(&self, vars: &Vars) -> String {
        self.render_with(vars, |s| s.to_string())
    }

    /// Substitute with every value shell-quoted (commands). Invariant 6.
    pub fn render_shell(&self, vars: &Vars) -> String {
        self.render_with(vars, shell_quote)
    }

    fn render_with(&self, vars: &Vars, quote: impl Fn(&str) -> String) -> String {
        let mut out = String::with_capacity(self.source.len() + 16);
        for piece in &self.pieces {
            match piece {
                Piece::Lit(l) => out.push_str(l),
                Piece::Var(v) => out.push_str(&quote(vars.get(v))),
            }
        }
        out
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn ident_len(bytes: &[u8]) -> Option<usize> {
    let first = *bytes.first()?;
    if !(first.is_ascii_lowercase() || first == b'_') {
        return None;
    }
    Some(
        bytes
            .iter()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_')
            .count(),
    )
}

/// POSIX shell quoting: safe words stay as they are, everything else goes in
/// single quotes with embedded quotes escaped.
pub fn shell_quote(value: &str) -> String {
    let safe = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if safe {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// Values for the placeholders of one unit in one deploy.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    pub host: String,
    pub address: String,
    pub instance: String,
    pub port: String,
    pub unit: String,
    pub version: String,
    pub previous_version: String,
    pub target: String,
}

impl Vars {
    pub fn for_unit(unit: &Unit, version: &str, previous_version: &str, target: &str) -> Vars {
        Vars {
            host: unit.host.name.clone(),
            address: unit.host.address.clone(),
            instance: unit.instance.to_string(),
            port: unit.port.map(|p| p.to_string()).unwrap_or_default(),
            unit: unit.name(),
            version: version.to_string(),
            previous_version: previous_version.to_string(),
            target: target.to_string(),
        }
    }

    fn get(&self, name: &str) -> &str {
        match name {
            "host" => &self.host,
            "address" => &self.address,
            "instance" => &self.instance,
            "port" => &self.port,
            "unit" => &self.unit,
            "version" => &self.version,
            "previous_version" => &self.previous_version,
            "target" => &self.target,
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            host: "web-1".into(),
            address: "10.0.0.1".into(),
            version: "1.2; rm -rf /".into(),
            ..Vars::default()
        }
    }

    #[test]
    fn substitutes_and_quotes() {
        let t = Template::parse("deploy {version} on {host}", PLACEHOLDERS).unwrap();
        assert_eq!(t.render_shell(&vars()), "deploy '1.2; rm -rf /' on web-1");
        assert_eq!(t.render(&vars()), "deploy 1.2; rm -rf / on web-1");
    }

    #[test]
    fn shell_braces_stay_literal() {
        let src = "echo ${HOME} | awk '{print $1}' {{host}} {host}";
        let t = Template::parse(src, PLACEHOLDERS).unwrap();
        assert_eq!(
            t.render_shell(&vars()),
            "echo ${HOME} | awk '{print $1}' {host} web-1"
        );
    }

    #[test]
    fn unknown_placeholder_has_span() {
        let err = Template::parse("switch {verison}", PLACEHOLDERS).unwrap_err();
        assert_eq!(err.name, "verison");
        assert_eq!(&"switch {verison}"[err.start..err.end], "{verison}");
    }

    #[test]
    fn quote_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("v1.2.3"), "v1.2.3");
    }
}
