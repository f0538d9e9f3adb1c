//! changeover-core: the domain, the config-to-plan validation, the planner and
//! the engine. No network crate here: the engine sees the world through the
//! traits in [`lb`], [`remote`] and [`health`].

pub mod health;
pub mod lb;
pub mod remote;
pub mod template;
pub mod unit;
pub mod config;
pub mod plan;
pub mod planner;
pub mod event;
pub mod journal;
pub mod engine;
pub mod sim;
