//! Keys and values: range answers, txns, conditional deletes.

use super::gateway::{number, Inner};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use changeover_core::store::{lock_key, LockRecord, Revision, StoreError, Versioned};
use serde::Deserialize;
use serde_json::{json, Value};

impl Inner {
    pub(super) async fn range(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        let k = self.key(key)?;
        let answer = self
            .call("/v3/kv/range", &json!({ "key": k }))
            .await
            .map_err(|f| self.error(f))?;
        let kvs = parse_kvs(&answer).map_err(|e| self.corrupt(key, e))?;
        Ok(kvs.into_iter().next())
    }

    pub(super) fn versioned(&self, key: &str, kv: &Kv) -> Result<Versioned, StoreError> {
        let value = serde_json::from_slice(&kv.value)
            .map_err(|e| self.corrupt(key, format!("not JSON: {e}")))?;
        Ok(Versioned {
            value,
            revision: kv.mod_revision as Revision,
        })
    }

    pub(super) fn record(&self, name: &str, kv: &Kv) -> Result<LockRecord, StoreError> {
        serde_json::from_slice(&kv.value)
            .map_err(|e| self.corrupt(&lock_key(name), format!("not a lock record: {e}")))
    }

    /// A txn: `compare` → `success`, else read `key`. `Ok(Ok(revision))`
    /// when it succeeded, `Ok(Err(current))` with what is there instead.
    pub(super) async fn txn(
        &self,
        key: &str,
        compare: Value,
        success: Value,
    ) -> Result<Result<i64, Option<Kv>>, StoreError> {
        let k = self.key(key)?;
        let answer = self
            .call(
                "/v3/kv/txn",
                &json!({
                    "compare": [compare],
                    "success": [success],
                    "failure": [{ "request_range": { "key": k } }],
                }),
            )
            .await
            .map_err(|f| self.error(f))?;
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(Ok(header_revision(&answer)));
        }
        let range = answer
            .get("responses")
            .and_then(|r| r.get(0))
            .and_then(|r| r.get("response_range"))
            .cloned()
            .unwrap_or(Value::Null);
        let kvs = parse_kvs(&range).map_err(|e| self.corrupt(key, e))?;
        Ok(Err(kvs.into_iter().next()))
    }

    /// Delete `key` if it is still at `mod_revision`; `true` when it was.
    pub(super) async fn delete_if(&self, key: &str, mod_revision: i64) -> Result<bool, StoreError> {
        let k = self.key(key)?;
        let outcome = self
            .txn(
                key,
                json!({ "target": "MOD", "result": "EQUAL", "key": k, "mod_revision": mod_revision.to_string() }),
                json!({ "request_delete_range": { "key": k } }),
            )
            .await?;
        Ok(outcome.is_ok())
    }
}

/// One key-value of a range answer, decoded.
#[derive(Debug)]
pub(super) struct Kv {
    pub(super) key: Vec<u8>,
    pub(super) value: Vec<u8>,
    pub(super) create_revision: i64,
    pub(super) mod_revision: i64,
    pub(super) lease: i64,
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    create_revision: Value,
    #[serde(default)]
    mod_revision: Value,
    #[serde(default)]
    lease: Value,
}

/// The `kvs` of a range answer (absent when empty).
pub(super) fn parse_kvs(answer: &Value) -> Result<Vec<Kv>, String> {
    let Some(kvs) = answer.get("kvs") else {
        return Ok(Vec::new());
    };
    let raw: Vec<RawKv> =
        serde_json::from_value(kvs.clone()).map_err(|e| format!("unexpected range answer: {e}"))?;
    raw.into_iter()
        .map(|r| {
            Ok(Kv {
                key: B64
                    .decode(&r.key)
                    .map_err(|e| format!("key is not base64: {e}"))?,
                value: B64
                    .decode(&r.value)
                    .map_err(|e| format!("value is not base64: {e}"))?,
                create_revision: number(&r.create_revision),
                mod_revision: number(&r.mod_revision),
                lease: number(&r.lease),
            })
        })
        .collect()
}

pub(super) fn header_revision(answer: &Value) -> i64 {
    answer
        .get("header")
        .and_then(|h| h.get("revision"))
        .map(number)
        .unwrap_or(0)
}

/// The smallest key after every key starting with `prefix` (etcd's
/// `range_end` for a prefix).
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the key space.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
