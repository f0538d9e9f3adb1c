//! `changeover rollback [TARGET]`: deploy the pointer's previous version
//! (skipping units already on it), then swap current and previous.

use super::execute::{roll, Kind};
use super::Ctx;
use crate::cli::RunArgs;

pub async fn run(ctx: &Ctx, target: Option<String>, run: RunArgs) -> u8 {
    roll(ctx, Kind::Rollback, target, run).await
}
