//! The README's first screen, run as written: the commands between `<!-- first-call:begin -->`
//! and `<!-- first-call:end -->` (every `sh` block, in order) against the real binary started
//! as a newcomer starts it, with the variables the README has them set. Only `pip install`
//! is not run: `.venv` (tests/requirements.txt) already has the SDK.

mod common;

use common::process::{gatehouse, spawn};

const README: &str = include_str!("../README.md");

/// The `sh` blocks between the markers, in order.
fn first_call_blocks() -> Vec<&'static str> {
    let begin = README
        .find("<!-- first-call:begin -->")
        .expect("the README marks its first-call commands");
    let end = README
        .find("<!-- first-call:end -->")
        .expect("the README marks the end of its first-call commands");
    let mut blocks = Vec::new();
    let mut rest = &README[begin..end];
    while let Some(start) = rest.find("```sh\n") {
        let body = &rest[start + "```sh\n".len()..];
        let stop = body.find("\n```").expect("a closed code block");
        blocks.push(&body[..=stop]);
        rest = &body[stop + 4..];
    }
    blocks
}

/// Each curl command of the blocks as one line (continuations joined).
fn curl_commands(blocks: &[&str]) -> Vec<String> {
    let joined = blocks.join("\n").replace("\\\n", " ");
    joined
        .lines()
        .filter(|l| l.contains("curl "))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_readme_request_with_a_body_says_its_content_type() {
    let blocks = first_call_blocks();
    assert!(blocks.len() >= 5, "{blocks:#?}");
    let curls = curl_commands(&blocks);
    assert!(curls.len() >= 4, "{curls:#?}");
    for curl in curls.iter().filter(|c| c.contains(" -d ")) {
        assert!(
            curl.contains("-H 'Content-Type: application/json'"),
            "a README request sends a body without its Content-Type: {curl}"
        );
    }
    // The variables the blocks use are the ones the README tells the reader to set.
    for set in [
        "export GATEHOUSE=http://127.0.0.1:8080\n",
        "export ADMIN_PASSWORD='",
    ] {
        assert!(README.contains(set), "the README no longer sets {set}");
    }
}

#[test]
fn the_readme_first_call_runs_as_written() {
    let python_bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin");
    let ready = std::process::Command::new(python_bin.join("python3"))
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        assert!(!common::in_ci(), "CI=true but .venv lacks the openai SDK");
        eprintln!(
            "\n!!! SKIPPED the README test: .venv/bin/pip install -r tests/requirements.txt !!!\n"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(gatehouse(dir.path()));
    let password = server.bootstrap_password();
    let script: String = first_call_blocks()
        .iter()
        .flat_map(|b| b.lines())
        .filter(|l| !l.trim_start().starts_with("pip install"))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = format!(
        "{}:{}",
        python_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("GATEHOUSE", format!("http://{}", server.addr))
        .env("ADMIN_PASSWORD", &password)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README's commands failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // The organization was created, the curl stream ended as OpenAI's does, and the SDK
    // printed the streamed reply.
    assert!(stdout.contains(r#""slug":"acme""#), "{stdout}");
    // (The events follow the organization's JSON on its line: curl adds no newline.)
    assert_eq!(common::openai_stream_text(&stdout), "Mock reply to: Hello");
    assert!(
        stdout
            .lines()
            .any(|l| l == "Mock reply to: Hello from the SDK"),
        "{stdout}"
    );
    server.terminate();
}
