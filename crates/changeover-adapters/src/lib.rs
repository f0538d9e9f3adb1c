//! changeover-adapters: implementations of the core's seams.
//!
//! - [`lb`]: load balancers (HAProxy runtime API, …)
//! - [`remote`]: command execution (SSH through the system OpenSSH, local)
//! - [`health`]: health probes (http, tcp, command)
//! - [`demo_app`]: the small well-behaved HTTP app used by `changeover demo`
//!   and by the integration tests
//! - [`witness`]: the traffic witness, steady HTTP load during a deploy that
//!   counts every failed request

pub mod consul;
pub mod demo_app;
pub mod discovery;
pub mod health;
pub mod hooks;
pub mod lb;
pub mod local_command;
pub mod notify;
pub mod remote;
pub mod store;
pub mod version;
pub mod wiring;
pub mod witness;
