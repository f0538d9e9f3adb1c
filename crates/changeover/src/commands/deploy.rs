//! `changeover deploy [TARGET] --version V`.

use super::execute::{execute, Kind, Request};
use super::Ctx;
use crate::cli::RunArgs;

pub async fn run(
    ctx: &Ctx,
    target: Option<String>,
    version: String,
    run: RunArgs,
    force: Vec<String>,
    redeploy: bool,
) -> u8 {
    let (version, version_ref) = match super::around::resolve_version(&ctx.plan, &version).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let req = Request {
        kind: Kind::Deploy,
        target,
        version: Some(version),
        version_ref,
        message: run.message,
        force,
        redeploy,
        lock_wait: run.lock_wait,
        report: run.report,
        silent: run.silent,
    };
    execute(ctx, req).await.exit
}
