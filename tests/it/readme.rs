//! The README as written (issue 19 §5): its "every key" block is a file `check` accepts, and
//! its tour runs, command by command, against bindgate on the shipped `proxy.yaml`, with the
//! answers its comments promise.

use crate::harness::*;
use std::path::Path;

fn readme() -> String {
    std::fs::read_to_string(repo_path("README.md")).expect("README.md")
}

/// The first fenced block with `fence` (e.g. "```yaml") after the line holding `after`.
fn block_after(text: &str, after: &str, fence: &str) -> String {
    let from = text
        .find(after)
        .unwrap_or_else(|| panic!("README: `{after}` is gone"));
    let rest = &text[from..];
    let open = rest
        .find(&format!("\n{fence}\n"))
        .unwrap_or_else(|| panic!("README: no {fence} block after `{after}`"));
    let body = &rest[open + fence.len() + 2..];
    let close = body.find("\n```").expect("the block ends");
    body[..close + 1].to_string()
}

/// A folder holding `proxy.yaml` and `certs/dev` (the test PKI, as `scripts/run.sh` makes
/// it), as the README's commands expect to be run from.
fn repository_like(pki: &Pki, yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::os::unix::fs::symlink(pki.dir.path(), dir.path().join("certs/dev")).unwrap();
    std::fs::write(dir.path().join("proxy.yaml"), yaml).unwrap();
    dir
}

fn check_in(dir: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .args(["check", "-c", "proxy.yaml"])
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_every_key_block_passes_check() {
    let pki = Pki::new();
    let block = block_after(&readme(), "Every key, with its default", "```yaml");
    assert!(
        block.contains("listen:") && block.contains("telemetry:"),
        "{block}"
    );
    let dir = repository_like(&pki, &block);
    let (ok, text) = check_in(dir.path());
    assert!(ok, "the README's block is refused:\n{text}");
    // Every top-level key of the file is in it (set or as a comment).
    for key in [
        "listen:",
        "admin:",
        "issuer:",
        "jwks:",
        "tokens:",
        "introspection:",
        "registration:",
        "dpop:",
        "session_store:",
        "upstreams:",
        "routes:",
        "state:",
        "server:",
        "log:",
        "telemetry:",
    ] {
        assert!(
            block
                .lines()
                .any(|l| l.trim_start_matches("# ").starts_with(key)),
            "{key} is not in the block"
        );
    }
}

#[test]
fn the_tour_runs_as_written() {
    let pki = Pki::new();
    let (shipped, yaml) = shipped_proxy_yaml();
    let bg = Bindgate::start_with_files(&pki, &yaml, &[], Ports::Named);
    // The folder the tour is run from: the shipped file on these ports, certs/dev beside it.
    let dir = repository_like(
        &pki,
        &shipped
            .replace("127.0.0.1:8443", &bg.listen.to_string())
            .replace("localhost:8443", &format!("localhost:{}", bg.port))
            .replace("127.0.0.1:9901", &format!("127.0.0.1:{}", bg.admin_port)),
    );
    let tour = block_after(&readme(), "## A tour", "```sh")
        .replace("./target/release/bindgate", env!("CARGO_BIN_EXE_bindgate"))
        .replace("localhost:8443", &format!("localhost:{}", bg.port))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{}", bg.admin_port));
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &tour])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the tour stopped:\n{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The answers the tour's comments promise, in order.
    // (A body ends without a line break: a status line may follow it on the same line.)
    let mut heads: Vec<(usize, &str)> = said
        .match_indices("HTTP/2 ")
        .chain(said.match_indices("HTTP/1.1 "))
        .collect();
    heads.sort();
    let statuses: Vec<&str> = heads
        .iter()
        .map(|(at, head)| &said[at + head.len()..at + head.len() + 3])
        .collect();
    assert_eq!(
        statuses,
        ["401", "201", "401", "403", "201", "403", "201", "401", "401", "201", "204"],
        "{said}"
    );
    assert!(said.contains(r#"{"status":"ok"}"#), "{said}");
    assert!(said.contains(r#"{"status":"ready"}"#), "{said}");
    assert!(said.contains(&pki.thumbprint("client1")), "{said}");
    assert!(
        said.contains("Missing / invalid client X.509 certificate for x5t#S256 bound access token"),
        "{said}"
    );
    assert!(
        said.contains(r#"scope="client-reg:grant:client_credentials""#),
        "{said}"
    );
    assert!(
        said.contains(r#"DPoP error="invalid_dpop_proof""#),
        "{said}"
    );
    assert!(
        said.contains(r#""sub":"alice""#),
        "the session list: {said}"
    );
    assert!(said.contains(r#""error":"not_found""#), "{said}");
    assert!(said.contains("bindgate_authorisations_total{"), "{said}");
    // The proof key is made where the tour says: certs/dev/dpop.key.
    assert!(pki.path("dpop.key").exists());
}

/// Each `yaml` fragment of the README (introspection, Redis, claim headers), put into the
/// "every key" file as an operator would — its sections merged in, a `state` or `routes` it
/// gives replacing the file's — passes `check`, with the environment variables and the CA
/// file it names supplied.
#[test]
fn every_yaml_fragment_passes_check_in_the_every_key_file() {
    use serde_yaml_ng::{Mapping, Value};
    let pki = Pki::new();
    let text = readme();
    let base: Value = serde_yaml_ng::from_str(&block_after(
        &text,
        "Every key, with its default",
        "```yaml",
    ))
    .unwrap();
    let mut fragments = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("\n```yaml\n") {
        let body = &rest[at + 9..];
        let end = body.find("\n```").unwrap();
        fragments.push(body[..end + 1].to_string());
        rest = &body[end..];
    }
    assert!(fragments.len() >= 4, "{} yaml blocks", fragments.len());
    fn merge(into: &mut Value, from: &Value) {
        match (into, from) {
            (Value::Mapping(a), Value::Mapping(b)) => {
                for (k, v) in b {
                    match a.get_mut(k) {
                        Some(old) => merge(old, v),
                        None => {
                            a.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            (slot, v) => *slot = v.clone(),
        }
    }
    let mut checked = 0;
    for fragment in &fragments {
        let part: Value = serde_yaml_ng::from_str(fragment).unwrap();
        let Value::Mapping(part) = part else {
            panic!("not a mapping: {fragment}")
        };
        if part.contains_key("listen") {
            continue; // the every-key file itself
        }
        let mut file = base.clone();
        let Value::Mapping(top) = &mut file else {
            unreachable!()
        };
        for (k, v) in &part {
            if k.as_str() == Some("state") || k.as_str() == Some("routes") {
                top.insert(k.clone(), v.clone());
            } else {
                let slot = top
                    .entry(k.clone())
                    .or_insert_with(|| Value::Mapping(Mapping::new()));
                merge(slot, v);
            }
        }
        let dir = repository_like(&pki, &serde_yaml_ng::to_string(&file).unwrap());
        std::fs::copy(pki.path("ca.crt"), dir.path().join("certs/idp-ca.crt")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bindgate"))
            .args(["check", "-c", "proxy.yaml"])
            .current_dir(dir.path())
            .env("BINDGATE_INTROSPECTION_SECRET", "a-secret")
            .env("BINDGATE_REDIS_PASSWORD", "a-password")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the fragment\n{fragment}\nis refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert_eq!(checked, fragments.len() - 1);
}
