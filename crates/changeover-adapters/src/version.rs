//! `[artifact] check` and `[version] git`: before anything moves, the build
//! must exist, and a git ref becomes the full sha it names.

use crate::local_command::{self, LocalCommand, LocalFailure};
use changeover_core::plan::{ArtifactSpec, GitSource};
use changeover_core::template::Vars;

/// Run the artifact check for `version`; why it is a no-go, if it is.
pub async fn check_artifact(
    spec: &ArtifactSpec,
    version: &str,
    previous_version: &str,
    target: &str,
) -> Result<(), String> {
    let vars = Vars {
        version: version.to_string(),
        previous_version: previous_version.to_string(),
        target: target.to_string(),
        ..Vars::default()
    };
    let command = spec.check.render_shell(&vars);
    local_command::run(LocalCommand {
        command: &command,
        dir: &spec.dir,
        env: &[],
        timeout: spec.timeout,
    })
    .await
    .map(|_| ())
    .map_err(|e| format!("the artifact check `{command}` {e}: is version {version} built?"))
}

/// A full 40-hex sha (accepted as it is).
fn is_full_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The full sha `reference` names: asked of the remote first (`git
/// ls-remote`, branches and tags as the flightplan script did), then of the
/// local repository (`git rev-parse`, which also knows short shas). `Err`
/// names the ref and what was asked.
pub async fn resolve_ref(source: &GitSource, reference: &str) -> Result<String, String> {
    if reference.is_empty()
        || reference.starts_with('-')
        || reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("`{reference}` is not a git ref"));
    }
    if is_full_sha(reference) {
        return Ok(reference.to_lowercase());
    }
    let dir = source.local_dir.clone().unwrap_or_else(std::env::temp_dir);
    let git = |args: String| {
        let dir = dir.clone();
        let timeout = source.timeout;
        async move {
            local_command::run(LocalCommand {
                command: &args,
                dir: &dir,
                env: &[("GIT_TERMINAL_PROMPT".to_string(), "0".to_string())],
                timeout,
            })
            .await
        }
    };
    let quoted = changeover_core::template::shell_quote(reference);
    // The remote: origin of the local repository, or the URL.
    let remote = match &source.url {
        Some(url) => Some(changeover_core::template::shell_quote(url)),
        None => match git("git remote get-url origin".into()).await {
            Ok(_) => Some("origin".to_string()),
            Err(_) => None,
        },
    };
    let mut asked = Vec::new();
    if let Some(remote) = &remote {
        // `X^{}` too: an annotated tag's peeled line is the commit.
        let peeled = changeover_core::template::shell_quote(&format!("{reference}^{{}}"));
        match git(format!("git ls-remote {remote} {quoted} {peeled}")).await {
            Ok(out) => {
                if let Some(sha) = pick(&String::from_utf8_lossy(&out), reference) {
                    return Ok(sha);
                }
                asked.push(format!("git ls-remote {remote}: no such branch or tag"));
            }
            Err(e) => asked.push(format!("git ls-remote {remote} {e}")),
        }
    }
    if source.local_dir.is_some() {
        match git(format!(
            "git rev-parse --verify --quiet {}",
            changeover_core::template::shell_quote(&format!("{reference}^{{commit}}"))
        ))
        .await
        {
            Ok(out) => {
                let sha = String::from_utf8_lossy(&out).trim().to_string();
                if is_full_sha(&sha) {
                    return Ok(sha);
                }
                asked.push(format!("git rev-parse: unexpected answer `{sha}`"));
            }
            Err(LocalFailure::Failed { .. }) => {
                asked.push("git rev-parse: not a commit in the local repository".into())
            }
            Err(e) => asked.push(format!("git rev-parse {e}")),
        }
    }
    Err(format!(
        "--version {reference}: no such git ref in {} ({})",
        source.git,
        asked.join("; ")
    ))
}

/// The sha of `reference` in `git ls-remote` output: an exact ref name
/// first (`refs/heads/X`, `refs/tags/X`, a peeled tag `refs/tags/X^{}`
/// wins over the tag object), else the only line.
fn pick(out: &str, reference: &str) -> Option<String> {
    let lines: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(sha, _)| is_full_sha(sha))
        .collect();
    let find = |name: String| {
        lines
            .iter()
            .find(|(_, r)| *r == name)
            .map(|(s, _)| s.to_string())
    };
    find(format!("refs/tags/{reference}^{{}}"))
        .or_else(|| find(format!("refs/heads/{reference}")))
        .or_else(|| find(format!("refs/tags/{reference}")))
        .or_else(|| find(reference.to_string()))
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn ls_remote_output() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let c = "c".repeat(40);
        let out = format!("{a}\trefs/heads/main\n{b}\trefs/tags/v1\n{c}\trefs/tags/v1^{{}}\n");
        assert_eq!(pick(&out, "main"), Some(a.clone()));
        assert_eq!(
            pick(&out, "v1"),
            Some(c),
            "the peeled commit, not the tag object"
        );
        assert_eq!(pick(&out, "nope"), None);
        assert_eq!(pick("", "main"), None);
    }
}
