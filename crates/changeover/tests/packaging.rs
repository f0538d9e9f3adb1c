//! What ships with the binary: completions, the man page, `plan --json`,
//! the flags the demo refuses, and the `[hooks]`/`[artifact]`/`[version]`
//! config errors.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_changeover");

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn bash_completion_completes_subcommands() {
    let out = run(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("changeover.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // Source it in bash and ask for the completions of `changeover ro`.
    let probe = format!(
        "source {}; COMP_WORDS=(changeover ro); COMP_CWORD=1; COMP_LINE='changeover ro'; COMP_POINT=${{#COMP_LINE}}; _changeover changeover ro changeover; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(
        words.lines().any(|w| w == "rollback"),
        "completes `ro` to rollback: {words:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for shell in ["zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("deploy"),
            "{shell}"
        );
    }
    assert_eq!(run(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn the_man_page_renders() {
    let out = run(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    let roff = String::from_utf8_lossy(&out.stdout);
    assert!(roff.starts_with(".ie") || roff.contains(".TH"), "{roff}");
    // `man -l -` renders it (man-db is installed by scripts/test.sh).
    let mut man = Command::new("man")
        .args(["-l", "-"])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("man is installed (apt-get install man-db)");
    use std::io::Write;
    man.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let rendered = man.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert!(text.contains("changeover"), "{text}");
    assert!(text.contains("rollback"), "{text}");
}

#[test]
fn plan_json_is_one_document() {
    let out = run(&[
        "--config",
        &fixture("shop.toml"),
        "plan",
        "--version",
        "1.4.2",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(doc["event"], "plan");
    assert_eq!(doc["version"], "1.4.2");
    assert_eq!(doc["units"], 10);
    assert!(doc["waves"].as_array().unwrap().len() > 1);
    assert_eq!(doc["waves"][0][0]["unit"], "web-1");
    assert!(doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s.as_str().unwrap().starts_with("run on web-1")));
    assert_eq!(doc["fleet"][0]["origin"], "config");
}

#[test]
fn the_demo_refuses_a_config_it_would_ignore() {
    let out = run(&["demo", "--config", "mine.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config is not used"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("something"), "").unwrap();
    let out = run(&["demo", "--keep", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

fn config_error(extra: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("app = \"shop\"\n[[hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[[load_balancers]]\nkind = \"none\"\n[deploy]\nrun = \"true\"\n{extra}"),
    )
    .unwrap();
    let out = run(&[
        "--config",
        path.to_str().unwrap(),
        "plan",
        "--version",
        "v1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{extra}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn around_the_rollout_config_errors() {
    assert!(config_error("[hooks]\npre_deploy = \" \"\n").contains("hook pre_deploy is empty"));
    assert!(
        config_error("[hooks]\npre_deploy = \"x\"\ntimeout = \"soon\"\n")
            .contains("not a duration")
    );
    assert!(config_error("[artifact]\ntimeout = \"5s\"\n").contains("[artifact] needs `check`"));
    let e = config_error("[artifact]\ncheck = \"ls {host}\"\n");
    assert!(e.contains("unknown placeholder `{host}`"), "{e}");
    assert!(config_error("[version]\ngit = \"no/such/dir\"\n").contains("is not a directory"));
    // [deploy] is in the base config: a second table is a TOML error, so
    // prepare_parallel without prepare is checked through the parser.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "app = \"shop\"\n[[hosts]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[[load_balancers]]\nkind = \"none\"\n[deploy]\nrun = \"true\"\nprepare_parallel = 4\n").unwrap();
    let out = run(&[
        "--config",
        path.to_str().unwrap(),
        "plan",
        "--version",
        "v1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("prepare_parallel is set but there is no prepare"));
    let e = config_error("[version]\ngit = \"https://me:hunter2@git.example/shop.git\"\n");
    assert!(e.contains("carries a password"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn credentials_in_urls_never_reach_the_error() {
    for extra in [
        "[store]\nkind = \"etcd\"\nendpoints = [\"https://root:s3cr3t-pw@10.0.0.5:2379\"]\n",
        "[store]\nkind = \"consul\"\naddress = \"http://tok:s3cr3t-pw@127.0.0.1:8500\"\n",
        "[version]\ngit = \"https://me:s3cr3t-pw@git.example/shop.git\"\n",
    ] {
        let e = config_error(extra);
        assert!(!e.contains("s3cr3t-pw"), "{e}");
    }
}
