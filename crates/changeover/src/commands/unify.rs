//! `changeover unify [TARGET]`: bring every unit of the target whose recorded
//! version differs to the pointer's current version; moves no pointer.

use super::execute::{execute, Kind, Request};
use super::Ctx;
use crate::cli::RunArgs;

pub async fn run(ctx: &Ctx, target: Option<String>, run: RunArgs) -> u8 {
    let req = Request {
        kind: Kind::Unify,
        target,
        version: None,
        message: run.message,
        force: Vec::new(),
        redeploy: false,
        lock_wait: run.lock_wait,
    };
    execute(ctx, req).await.exit
}
