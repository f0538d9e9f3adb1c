//! `changeover rollback [TARGET]`: deploy the pointer's previous version
//! (skipping units already on it), then swap current and previous.

use super::execute::{execute, Kind, Request};
use super::Ctx;
use crate::cli::RunArgs;

pub async fn run(ctx: &Ctx, target: Option<String>, run: RunArgs) -> u8 {
    let req = Request {
        kind: Kind::Rollback,
        target,
        version: None,
        message: run.message,
        force: Vec::new(),
        redeploy: false,
        lock_wait: run.lock_wait,
    };
    execute(ctx, req).await.exit
}
