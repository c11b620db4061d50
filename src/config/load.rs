//! Reading `proxy.yaml` into the file structs, collecting every structural problem.

use serde_yaml_ng::Value;
use std::path::Path;

use super::file::FileConfig;
use super::{validate, Config, ConfigError, Problem};

/// At most this many structural problems are collected from one file before giving up.
const MAX_STRUCTURAL_PROBLEMS: usize = 64;

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let fail = |problems: Vec<Problem>| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(vec![Problem {
            key: String::new(),
            reason: format!("cannot read the file: {e}"),
        }])
    })?;
    load_str(&text, path)
}

/// Parses and validates configuration text as if read from `path` (relative paths in it start
/// from `path`'s directory).
pub fn load_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let fail = |problems: Vec<Problem>| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    let (file, mut problems) = parse(text);
    // What parsed is validated even when some keys were refused, so every problem shows at once.
    let validated = file.map(|f| validate::validate(f, path));
    match validated {
        Some(Ok(config)) if problems.is_empty() => Ok(config),
        Some(Ok(_)) | None => Err(fail(problems)),
        Some(Err(more)) => {
            problems.extend(more);
            Err(fail(problems))
        }
    }
}

/// Parses YAML text into the file structs. Unknown keys and wrongly typed values are all
/// reported: each offending key is noted, removed, and the rest parsed again. Returns what
/// parsed (if anything did) and the problems met on the way.
pub fn parse(text: &str) -> (Option<FileConfig>, Vec<Problem>) {
    let one = |reason: String| {
        (
            None,
            vec![Problem {
                key: String::new(),
                reason,
            }],
        )
    };
    let mut value: Value = match serde_yaml_ng::from_str(text) {
        Ok(v) => v,
        Err(e) => return one(format!("not valid YAML: {e}")),
    };
    if value.is_null() {
        return one("the file is empty".into());
    }
    let mut problems = Vec::new();
    loop {
        match serde_path_to_error::deserialize::<_, FileConfig>(value.clone()) {
            Ok(file) => return (Some(file), problems),
            Err(err) => {
                let segments = path_segments(err.path());
                let message = err.inner().to_string();
                let (problem, removable) = describe(&segments, &message);
                problems.push(problem);
                let removed =
                    removable && remove_at(&mut value, &removable_path(&segments, &message));
                if !removed || problems.len() >= MAX_STRUCTURAL_PROBLEMS {
                    return (None, problems);
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

fn path_segments(path: &serde_path_to_error::Path) -> Vec<Segment> {
    use serde_path_to_error::Segment as S;
    path.iter()
        .filter_map(|s| match s {
            S::Map { key } => Some(Segment::Key(key.clone())),
            S::Seq { index } => Some(Segment::Index(*index)),
            S::Enum { variant } => Some(Segment::Key(variant.clone())),
            S::Unknown => None,
        })
        .collect()
}

fn render(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The text between the first pair of backticks of a serde message: the field's name.
fn quoted(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

fn unknown_field(message: &str) -> Option<&str> {
    message
        .starts_with("unknown field")
        .then(|| quoted(message))
        .flatten()
}

/// Turns one serde error into a problem, and says whether removing the key lets parsing go on.
fn describe(segments: &[Segment], message: &str) -> (Problem, bool) {
    // serde reports the line and column of the YAML node after the message; keep the message.
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_string();
    if let Some(field) = unknown_field(&message) {
        let mut key = segments.to_vec();
        // The path of an unknown field may or may not already end with the field itself.
        if !matches!(key.last(), Some(Segment::Key(k)) if k == field) {
            key.push(Segment::Key(field.to_string()));
        }
        let expected = message
            .split_once(", expected ")
            .map(|(_, e)| format!(" (expected {})", e.replace('`', "")))
            .unwrap_or_default();
        return (
            Problem {
                key: render(&key),
                reason: format!("unknown key{expected}"),
            },
            true,
        );
    }
    if message.starts_with("missing field") {
        let mut key = segments.to_vec();
        if let Some(field) = quoted(&message) {
            key.push(Segment::Key(field.to_string()));
        }
        return (
            Problem {
                key: render(&key),
                reason: "required key is missing".into(),
            },
            false,
        );
    }
    // A value of the wrong type: removing it lets optional keys fall back to their default.
    let removable = matches!(
        segments.last(),
        Some(Segment::Key(_)) | Some(Segment::Index(_))
    );
    (
        Problem {
            key: render(segments),
            reason: without_value(&message),
        },
        removable,
    )
}

/// serde's "invalid type: string \"x\", expected …" quotes the value given, which may be a
/// secret written in the wrong shape (`master_tokens: ["s3cret"]`): the problem names what
/// kind of value was given and what was expected, never the value.
fn without_value(message: &str) -> String {
    let Some((kind, rest)) = message.split_once(": ") else {
        return message.to_string();
    };
    if !matches!(kind, "invalid type" | "invalid value" | "invalid length") {
        return message.to_string();
    }
    let given = rest
        .split([' ', ','])
        .next()
        .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphabetic()))
        .unwrap_or("value");
    let expected = message
        .split_once(", expected ")
        .map(|(_, e)| e.replace('`', ""))
        .unwrap_or_else(|| "another value".into());
    let expected = match expected.as_str() {
        "struct SecretFile" => "a secret: a mapping with one of value, sha256, env, file".into(),
        _ => expected,
    };
    format!("{kind}: a {given} was given, expected {expected}")
}

fn removable_path(segments: &[Segment], message: &str) -> Vec<Segment> {
    let mut path = segments.to_vec();
    if let Some(field) = unknown_field(message) {
        if !matches!(path.last(), Some(Segment::Key(k)) if k == field) {
            path.push(Segment::Key(field.to_string()));
        }
    }
    path
}

/// Removes the node at `path`; false when there is nothing to remove.
fn remove_at(value: &mut Value, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = value;
    for seg in parents {
        node = match (seg, node) {
            (Segment::Key(k), Value::Mapping(m)) => match m.get_mut(k.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Index(i), Value::Sequence(s)) => match s.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Segment::Index(i), Value::Sequence(s)) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        parse(yaml).1.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_path() {
        let found = problems(
            "listen:\n  adress: x\n  address: \"127.0.0.1:1\"\n  tls: {cert: a, key: b, colour: red}\nfrobnicate: 1\n",
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("listen.adress: unknown key")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("listen.tls.colour: unknown key")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("frobnicate: unknown key")),
            "{found:?}"
        );
    }

    #[test]
    fn missing_and_mistyped_keys() {
        let found = problems("listen:\n  tls: {cert: a, key: b}\n");
        assert_eq!(found, vec!["listen.address: required key is missing"]);
        let found = problems(
            "listen: {address: \"127.0.0.1:1\", tls: {cert: a, key: b}}\nserver: {threads: many}\n",
        );
        assert!(
            found[0].starts_with("server.threads: invalid type"),
            "{found:?}"
        );
    }

    #[test]
    fn a_secret_in_the_wrong_shape_is_never_echoed() {
        for yaml in [
            "registration: {master_tokens: [\"s3cr3t-master\"]}",
            "session_store: {api_tokens: [\"s3cr3t-master\"]}",
            "state: {redis: {url: \"redis://x\", password: \"s3cr3t-master\"}}",
            "state: {redis: {url: \"redis://x\", password: [\"s3cr3t-master\"]}}",
            "registration: {master_tokens: \"s3cr3t-master\"}",
        ] {
            let all = problems(yaml).join("\n");
            assert!(!all.contains("s3cr3t"), "{yaml}: {all}");
            assert!(
                all.contains("master_tokens")
                    || all.contains("api_tokens")
                    || all.contains("password"),
                "{yaml}: {all}"
            );
        }
    }

    #[test]
    fn not_yaml_and_empty() {
        assert!(problems("listen: [")[0].starts_with("not valid YAML"));
        assert_eq!(problems(""), vec!["the file is empty"]);
    }
}
