//! Reading the report back: a small well-formedness checker and readers
//! for the `data-*` attributes the charts carry.

/// A small well-formedness check: tags close in order, void elements and
/// `/>` aside; attributes quoted and unique; `&` only as an entity; no raw
/// `<` in text; the style sheet holds no markup.
pub(super) fn check_well_formed(html: &str) -> Result<(), String> {
    const VOID: [&str; 8] = ["meta", "br", "hr", "img", "input", "link", "col", "wbr"];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    let mut text = String::new();
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            text.push_str(rest);
            break;
        };
        text.push_str(&rest[..lt]);
        rest = &rest[lt..];
        let gt = rest.find('>').ok_or("unclosed <")?;
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        if tag.starts_with("!DOCTYPE") {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            match stack.pop() {
                Some(open) if open == name => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let (name, mut attrs) = tag.split_once(' ').unwrap_or((tag, ""));
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("bad tag name in <{tag}>"));
        }
        let mut seen = Vec::new();
        loop {
            attrs = attrs.trim_start();
            if attrs.is_empty() {
                break;
            }
            let eq = attrs
                .find("=\"")
                .ok_or_else(|| format!("unquoted attribute in <{tag}>"))?;
            let key = &attrs[..eq];
            if seen.contains(&key) || key.contains(' ') {
                return Err(format!("bad or repeated attribute {key:?} in <{name}>"));
            }
            seen.push(key);
            let close = attrs[eq + 2..].find('"').ok_or("unterminated attribute")?;
            text.push_str(&attrs[eq + 2..eq + 2 + close]);
            attrs = &attrs[eq + 2 + close + 1..];
        }
        if name == "style" {
            let end = rest.find("</style>").ok_or("unclosed style")?;
            if rest[..end].contains('<') {
                return Err("markup in the style sheet".into());
            }
            rest = &rest[end + "</style>".len()..];
            continue;
        }
        if !self_closing && !VOID.contains(&name) {
            stack.push(name.to_string());
        }
    }
    if !stack.is_empty() {
        return Err(format!("unclosed: {stack:?}"));
    }
    for (i, _) in text.match_indices('&') {
        let ent = &text[i..text.len().min(i + 8)];
        if !["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
            .iter()
            .any(|e| ent.starts_with(e))
        {
            return Err(format!("bare & at {ent:?}"));
        }
    }
    Ok(())
}

pub(super) fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    Some(&tag[i..i + tag[i..].find('"')?])
}

/// A timeline row: its id and its bars (phase, start ms, end ms).
pub(super) type Row = (String, Vec<(String, u64, u64)>);

/// The timeline's rows: (data-unit or data-wave, [(phase, start, end)]).
pub(super) fn rows(html: &str, key: &str) -> Vec<Row> {
    html.split("<g class=\"row")
        .skip(1)
        .filter_map(|chunk| {
            let row = &chunk[..chunk.find("</g>")?];
            let open = &row[..row.find('>')?];
            let id = attr(open, key)?.to_string();
            let bars = row
                .split("<rect class=\"ph")
                .skip(1)
                .map(|b| {
                    let n = |k| attr(b, k).unwrap().parse::<u64>().unwrap();
                    (
                        attr(b, "data-phase").unwrap().to_string(),
                        n("data-start-ms"),
                        n("data-end-ms"),
                    )
                })
                .collect();
            Some((id, bars))
        })
        .collect()
}

pub(super) fn series(html: &str, name: &str) -> Option<Vec<(u64, u64)>> {
    let i = html.find(&format!("data-series=\"{name}\""))?;
    let pts = attr(&html[i..], "data-points")?;
    Some(
        pts.split_whitespace()
            .map(|p| {
                let (t, c) = p.split_once(':').unwrap();
                (t.parse().unwrap(), c.parse().unwrap())
            })
            .collect(),
    )
}

pub(super) fn bound(html: &str) -> u64 {
    let i = html.find("data-bound=\"").unwrap();
    attr(&html[i - 1..], "data-bound").unwrap().parse().unwrap()
}
