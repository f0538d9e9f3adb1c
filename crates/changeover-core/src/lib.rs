//! changeover-core: the domain, the config-to-plan validation, the planner and
//! the engine. No network crate here: the engine sees the world through the
//! traits in [`lb`], [`remote`] and [`health`].

pub mod config;
pub mod discovery;
pub mod engine;
pub mod event;
pub mod health;
pub mod journal;
pub mod lb;
pub mod netstat;
pub mod plan;
pub mod planner;
pub mod remote;
pub mod sim;
pub mod state;
pub mod store;
pub mod template;
pub mod unit;
