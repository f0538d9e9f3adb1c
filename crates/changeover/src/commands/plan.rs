//! `changeover plan [TARGET] --version V`: the waves and every step; touches nothing.

use super::Ctx;
use crate::exit;
use crate::plan_view;

pub async fn run(ctx: &Ctx, target: Option<String>, typed: &str) -> u8 {
    // A git ref shows as the sha it names (`[version] git`).
    let (version, version_ref) = match super::around::resolve_version(&ctx.plan, typed).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let version = version.as_str();
    if ctx.json {
        return match plan_view::render_json(&ctx.plan, target.as_deref(), version) {
            Ok(mut doc) => {
                doc["version_ref"] = version_ref.into();
                ctx.print_json("plan", doc);
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::USAGE
            }
        };
    }
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
