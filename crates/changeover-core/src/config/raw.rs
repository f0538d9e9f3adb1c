//! The config as written: plain serde types, no judgement. Spans are looked
//! up afterwards by path in the parsed document (see `locate.rs`), so these
//! types stay simple and every later check can still point at a line.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Value;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub app: Option<String>,
    pub ssh: Option<RawSsh>,
    #[serde(default)]
    pub hosts: Vec<RawHost>,
    pub instances: Option<RawInstances>,
    #[serde(default)]
    pub load_balancers: Vec<RawLb>,
    pub drain: Option<RawDrain>,
    pub deploy: Option<RawDeploy>,
    pub health: Option<RawHealth>,
    pub strategy: Option<RawStrategy>,
    #[serde(default)]
    pub targets: BTreeMap<String, RawTarget>,
    pub state_dir: Option<String>,
    pub witness: Option<RawWitness>,
    pub store: Option<RawStore>,
    pub discovery: Option<RawDiscovery>,
    pub hooks: Option<RawHooks>,
    #[serde(default)]
    pub notify: Vec<RawNotify>,
    pub artifact: Option<RawArtifact>,
    pub version: Option<RawVersion>,
    /// `[status] version_command`: not built yet, rejected by name.
    pub status: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct RawHooks {
    pub pre_deploy: Option<String>,
    pub post_deploy: Option<String>,
    pub on_failure: Option<String>,
    pub pre_wave: Option<String>,
    pub post_wave: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawNotify {
    pub kind: Option<String>,
    pub url_env: Option<String>,
    pub events: Option<Vec<String>>,
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawArtifact {
    pub check: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawVersion {
    pub git: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawDiscovery {
    pub command: Option<String>,
    pub timeout: Option<String>,
    pub consul: Option<RawConsulDiscovery>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RawConsulDiscovery {
    pub address: Option<String>,
    pub service: Option<String>,
    pub passing_only: Option<bool>,
    pub host_address: Option<String>,
    pub datacenter: Option<String>,
    pub token_env: Option<String>,
    pub ca_file: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawStore {
    pub kind: Option<String>,
    pub endpoints: Option<Vec<String>>,
    /// consul: the agent's HTTP address.
    pub address: Option<String>,
    pub token_env: Option<String>,
    pub datacenter: Option<String>,
    pub prefix: Option<String>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub lock_ttl: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawWitness {
    pub url: String,
    pub rps: Option<i64>,
    pub timeout: Option<String>,
    pub abort_after_failures: Option<i64>,
    pub keep_alive_share: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawSsh {
    pub config_file: Option<String>,
    pub user: Option<String>,
    pub max_connections: Option<i64>,
    pub connect_timeout: Option<String>,
    pub control_persist: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawHost {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub ssh_user: Option<String>,
    pub ssh_port: Option<i64>,
    pub instance_id: Option<String>,
    pub instances: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct RawInstances {
    pub count: Option<i64>,
    pub first_port: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct RawLb {
    pub kind: String,
    pub scope: Option<String>,
    pub socket: Option<String>,
    /// haproxy: a command whose stdin/stdout is the Runtime API.
    pub socket_command: Option<String>,
    pub backend: Option<String>,
    pub server: Option<String>,
    pub method: Option<String>,
    /// embedded: the address the proxy listens on.
    pub listen: Option<String>,
    /// embedded: the backend address template of a unit.
    pub member: Option<String>,
    pub check_path: Option<String>,
    pub check_interval: Option<String>,
    /// rackspace: the balancer's numeric id.
    pub load_balancer_id: Option<Value>,
    pub region: Option<String>,
    pub identity_url: Option<String>,
    pub username_env: Option<String>,
    pub api_key_env: Option<String>,
    pub poll_interval: Option<String>,
    pub settle_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawDrain {
    pub mode: Option<String>,
    pub timeout: Option<String>,
    pub on_timeout: Option<String>,
    pub interval: Option<String>,
    pub command: Option<String>,
    pub local_address: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawDeploy {
    /// A command or a list of commands, run on the host over SSH.
    pub run: Option<Value>,
    /// A command or a list of commands, run on the operator's machine.
    pub local: Option<Value>,
    pub timeout: Option<String>,
    /// Run on every unit before the rollout, everything still in rotation.
    pub prepare: Option<Value>,
    pub prepare_parallel: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawHealth {
    pub http: Option<String>,
    pub tcp: Option<String>,
    pub command: Option<String>,
    pub expect_status: Option<i64>,
    pub expect_body: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<i64>,
    pub deadline: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawStrategy {
    pub batch: Option<Value>,
    pub window: Option<Value>,
    pub max_failures: Option<Value>,
    pub pause: Option<String>,
    pub groups: Option<Value>,
    pub wait_for_all_healthy: Option<bool>,
    pub gate: Option<String>,
    pub gate_timeout: Option<String>,
    pub on_failure: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawTarget {
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub percent: Option<f64>,
    pub pointer: Option<String>,
    #[serde(default)]
    pub require_message: bool,
    #[serde(default)]
    pub partial: bool,
    /// `false`, or the lock's name.
    pub lock: Option<Value>,
    pub lb_takeout: Option<bool>,
    pub can_unify: Option<bool>,
    pub strategy: Option<RawStrategy>,
    pub drain: Option<RawDrain>,
    pub health: Option<RawHealth>,
}
