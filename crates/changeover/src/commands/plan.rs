//! `changeover plan [TARGET] --version V`: the waves and every step; touches nothing.

use super::Ctx;
use crate::exit;
use crate::plan_view;

pub fn run(ctx: &Ctx, target: Option<String>, version: &str) -> u8 {
    match plan_view::render(&ctx.plan, target.as_deref(), version) {
        Ok(text) => {
            print!("{text}");
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}
