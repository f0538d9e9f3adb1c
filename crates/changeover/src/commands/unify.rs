//! `changeover unify [TARGET]`: bring every unit of the target whose recorded
//! version differs to the pointer's current version; moves no pointer.

use super::execute::{roll, Kind};
use super::Ctx;
use crate::cli::RunArgs;

pub async fn run(ctx: &Ctx, target: Option<String>, run: RunArgs) -> u8 {
    roll(ctx, Kind::Unify, target, run).await
}
