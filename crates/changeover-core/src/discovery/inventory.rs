//! What `[discovery] command` prints: a JSON array of hosts,
//!
//! ```json
//! [{"name": "web-1", "address": "10.0.10.1", "tags": ["production"],
//!   "instance_id": "i-0abc", "ssh_user": "deploy", "ssh_port": 22, "instances": 2}]
//! ```
//!
//! `name` and `address` are required; the rest is optional. An unknown
//! field is an error (a misspelt `ssh_usr` must not silently deploy as the
//! wrong user), and so is a wrong type; each error names the entry and the
//! field.

use super::{entry, DiscoveryError};
use crate::unit::{host_name_problem, Host, MAX_INSTANCES};
use serde_json::{Map, Value};

const FIELDS: &[&str] = &[
    "name",
    "address",
    "tags",
    "instance_id",
    "ssh_user",
    "ssh_port",
    "instances",
];

/// The hosts in `output` (a command's stdout), or why it is not a host list.
pub fn parse(origin: &str, output: &[u8]) -> Result<Vec<Host>, DiscoveryError> {
    let err = |m: String| DiscoveryError::new(origin, m);
    let value: Value = serde_json::from_slice(output).map_err(|e| {
        err(format!(
            "printed no valid JSON ({e}); it must print a JSON array of hosts such as [{{\"name\": \"web-1\", \"address\": \"10.0.10.1\"}}]"
        ))
    })?;
    let Value::Array(items) = value else {
        return Err(err(format!(
            "printed {} instead of a JSON array of hosts",
            kind(&value)
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| host(i, item).map_err(err))
        .collect()
}

fn host(i: usize, item: &Value) -> Result<Host, String> {
    let Value::Object(obj) = item else {
        return Err(format!(
            "entry {i} is {}, not an object with name and address",
            kind(item)
        ));
    };
    let name = match obj.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(format!(
                "entry {i}: `name` is {}, not a string",
                kind(other)
            ))
        }
        None => return Err(format!("entry {i}: field `name` is missing")),
    };
    let what = entry(i, &name);
    if let Some(hint) = host_name_problem(&name) {
        return Err(format!("{what}: the name is not usable: {hint}"));
    }
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "{what}: unknown field `{unknown}` (known fields: {})",
            FIELDS.join(", ")
        ));
    }
    let address = string(obj, "address", &what)?
        .ok_or_else(|| format!("{what}: field `address` is missing"))?;
    if address.trim().is_empty() {
        return Err(format!("{what}: `address` is empty"));
    }
    let tags = match obj.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tags)) => tags
            .iter()
            .map(|t| match t {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "{what}: `tags` holds {}, not a string",
                    kind(other)
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "{what}: `tags` is {}, not an array of strings",
                kind(other)
            ))
        }
    };
    let ssh_port = number(obj, "ssh_port", &what, 1, 65535)?.map(|p| p as u16);
    let instances = number(obj, "instances", &what, 1, MAX_INSTANCES as u64)?.map(|n| n as u32);
    Ok(Host {
        name,
        address,
        tags,
        ssh_user: string(obj, "ssh_user", &what)?,
        ssh_port,
        instance_id: string(obj, "instance_id", &what)?,
        instances,
    })
}

fn string(obj: &Map<String, Value>, key: &str, what: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{what}: `{key}` is {}, not a string", kind(other))),
    }
}

fn number(
    obj: &Map<String, Value>,
    key: &str,
    what: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(format!(
                "{what}: `{key}` = {n} is out of range ({min} to {max})"
            )),
        },
        Some(other) => Err(format!("{what}: `{key}` is {}, not a number", kind(other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(text: &str) -> String {
        parse("command `inv`", text.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn every_field() {
        let hosts = parse(
            "o",
            br#"[{"name":"web-1","address":"10.0.0.1","tags":["production"],"instance_id":"i-1",
                 "ssh_user":"deploy","ssh_port":2222,"instances":3},
                {"name":"web-2","address":"10.0.0.2"}]"#,
        )
        .unwrap();
        assert_eq!(hosts.len(), 2);
        let h = &hosts[0];
        assert_eq!(h.tags, vec!["production"]);
        assert_eq!(h.instance_id.as_deref(), Some("i-1"));
        assert_eq!(h.ssh_user.as_deref(), Some("deploy"));
        assert_eq!((h.ssh_port, h.instances), (Some(2222), Some(3)));
        assert_eq!(hosts[1], Host::new("web-2", "10.0.0.2"));
    }

    #[test]
    fn errors_name_the_entry_and_the_field() {
        assert!(bad("not json").contains("printed no valid JSON"));
        assert!(bad("{}").contains("printed an object instead of a JSON array"));
        assert_eq!(
            bad(r#"[{"name":"a","address":"1"},{"name":"b"}]"#),
            "command `inv`: entry 1 (`b`): field `address` is missing"
        );
        assert_eq!(
            bad(r#"[{"address":"1"}]"#),
            "command `inv`: entry 0: field `name` is missing"
        );
        assert!(bad(r#"[{"name":"a","address":"1","ssh_usr":"x"}]"#)
            .contains("entry 0 (`a`): unknown field `ssh_usr`"));
        assert!(bad(r#"[{"name":"a","address":"1","ssh_port":70000}]"#)
            .contains("`ssh_port` = 70000 is out of range"));
        assert!(bad(r#"[{"name":"a","address":"1","tags":"x"}]"#)
            .contains("`tags` is a string, not an array"));
        assert!(bad(r#"[{"name":"a b","address":"1"}]"#).contains("not usable"));
        assert!(bad(r#"[3]"#).contains("entry 0 is a number"));
    }
}
