//! Connect2id's registration policy: what a credential may register. A master token anything;
//! the full registration scope any metadata but the privileged; a narrowed scope
//! (`client-reg:grant:<name>`) clients for its grants only; no credential at all, where open
//! registration is on, clients for the open grants only. Judged on the registration body
//! (RFC 7591 §2), in front of the embedded registry and of an upstream provider alike.

use serde_json::Value;

pub use crate::grants::{Grant, Grants};

/// What the credential of a registration lets it register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// A master token: anything, privileged metadata included; the body is not judged.
    Master,
    /// The full registration scope: any metadata but the privileged.
    Full,
    /// Narrowed scopes: clients whose grants are all within these; no `scope`, no privileged
    /// metadata.
    Grants(Grants),
    /// No credential, open registration: clients within these grants; no `scope`, no
    /// privileged metadata.
    Open(Grants),
}

/// The registration rules of a configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The full scope (`registration.scope`).
    pub full_scope: String,
    /// Metadata only a master token may send (`registration.privileged_metadata`).
    pub privileged: Vec<String>,
}

impl Rules {
    pub fn of(registration: &crate::config::Registration) -> Rules {
        Rules {
            full_scope: registration.scope.clone(),
            privileged: registration.privileged_metadata.clone(),
        }
    }
}

/// Why a registration body is refused under a reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The body is not client metadata this policy can judge (400 `invalid_client_metadata`):
    /// it is not forwarded either.
    Metadata(String),
    /// The credential does not reach this far (403 `insufficient_scope`); `scope`, when one
    /// would, names it.
    NotPermitted { why: String, scope: Option<String> },
    /// Open registration does not reach this far: a credential is needed (401).
    NeedsCredential,
}

fn strings<'a>(
    body: &'a serde_json::Map<String, Value>,
    member: &str,
) -> Result<Option<Vec<&'a str>>, Refusal> {
    match body.get(member) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str())
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| Refusal::Metadata(format!("{member} must be an array of strings"))),
        Some(_) => Err(Refusal::Metadata(format!(
            "{member} must be an array of strings"
        ))),
    }
}

impl Reach {
    /// Judges a registration (or, for the embedded registry, an update) body.
    pub fn judge(&self, rules: &Rules, body: &[u8]) -> Result<(), Refusal> {
        if *self == Reach::Master {
            return Ok(());
        }
        let parsed: Value = serde_json::from_slice(body)
            .map_err(|_| Refusal::Metadata("The request body is not valid JSON".into()))?;
        let Some(body) = parsed.as_object() else {
            return Err(Refusal::Metadata(
                "The client metadata must be a JSON object".into(),
            ));
        };
        let refuse = |why: String, scope: Option<String>| match self {
            Reach::Open(_) => Refusal::NeedsCredential,
            _ => Refusal::NotPermitted { why, scope },
        };
        if let Some(member) = rules.privileged.iter().find(|m| body.contains_key(*m)) {
            return Err(refuse(
                format!("{member} may be set with a master token only"),
                None,
            ));
        }
        let permitted = match self {
            Reach::Master | Reach::Full => return Ok(()),
            Reach::Grants(g) | Reach::Open(g) => *g,
        };
        if body.contains_key("scope") {
            return Err(refuse(
                "Setting the client's scope needs the full registration scope".into(),
                Some(rules.full_scope.clone()),
            ));
        }
        // RFC 7591 §2: grant_types defaults to authorization_code, response_types to code.
        let grant_types =
            strings(body, "grant_types")?.unwrap_or_else(|| vec!["authorization_code"]);
        let response_types = strings(body, "response_types")?.unwrap_or_else(|| vec!["code"]);
        let mut needed = Grants::default();
        for value in &grant_types {
            match Grant::of_grant_type(value) {
                Some(g) => needed.insert(g),
                None => {
                    return Err(refuse(
                        format!("The grant type {value} needs the full registration scope"),
                        Some(rules.full_scope.clone()),
                    ))
                }
            }
        }
        // A response type is the grants it runs on: `code` the code flow, `token` and
        // `id_token` the implicit one (hybrid: both); `none` nothing.
        for value in &response_types {
            for part in value.split(' ').filter(|p| !p.is_empty()) {
                match part {
                    "code" => needed.insert(Grant::AuthorizationCode),
                    "token" | "id_token" => needed.insert(Grant::Implicit),
                    "none" => {}
                    other => {
                        return Err(refuse(
                            format!("The response type {other} needs the full registration scope"),
                            Some(rules.full_scope.clone()),
                        ))
                    }
                }
            }
        }
        let missing: Vec<Grant> = needed.iter().filter(|g| !permitted.contains(*g)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let scope = missing
            .iter()
            .map(|g| format!("{}:grant:{}", rules.full_scope, g.scope_name()))
            .collect::<Vec<_>>()
            .join(" ");
        let names = missing
            .iter()
            .map(|g| g.grant_type())
            .collect::<Vec<_>>()
            .join(", ");
        Err(refuse(
            format!("The credential does not permit registering a client for {names}"),
            Some(scope),
        ))
    }

    /// The grants a client registered under this reach keeps to on its updates (None: any).
    pub fn lasting_grants(&self) -> Option<Grants> {
        match self {
            Reach::Master | Reach::Full => None,
            Reach::Grants(g) | Reach::Open(g) => Some(*g),
        }
    }
}

/// The reach of a verified initial access token's scopes: the full scope, else the narrowed
/// ones (when `grant_scopes` is on), else none (None: 403 for the full scope).
pub fn reach_of_scopes(scopes: &[String], full_scope: &str, grant_scopes: bool) -> Option<Reach> {
    if scopes.iter().any(|s| s == full_scope) {
        return Some(Reach::Full);
    }
    if !grant_scopes {
        return None;
    }
    let prefix = format!("{full_scope}:grant:");
    let named = scopes
        .iter()
        .filter_map(|s| s.strip_prefix(&prefix))
        .filter_map(Grant::of_scope_name);
    let grants = Grants::permitted_by_scopes(named);
    (!grants.is_empty()).then_some(Reach::Grants(grants))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            full_scope: "client-reg".into(),
            privileged: vec![
                "preferred_client_id".into(),
                "preferred_client_secret".into(),
            ],
        }
    }

    fn narrowed(names: &[&str]) -> Reach {
        let scopes: Vec<String> = names
            .iter()
            .map(|n| format!("client-reg:grant:{n}"))
            .collect();
        reach_of_scopes(&scopes, "client-reg", true).unwrap()
    }

    fn judge(reach: &Reach, body: &str) -> Result<(), Refusal> {
        reach.judge(&rules(), body.as_bytes())
    }

    fn scope_of(r: Result<(), Refusal>) -> Option<String> {
        match r {
            Err(Refusal::NotPermitted { scope, .. }) => scope,
            other => panic!("not a 403: {other:?}"),
        }
    }

    #[test]
    fn a_narrowed_scope_registers_its_grants_only() {
        let code = narrowed(&["code"]);
        assert_eq!(
            judge(&code, r#"{"redirect_uris":["https://a/cb"]}"#),
            Ok(())
        );
        assert_eq!(
            judge(
                &code,
                r#"{"grant_types":["authorization_code","refresh_token"]}"#
            ),
            Ok(())
        );
        // Duplicates change nothing, either way.
        assert_eq!(
            judge(
                &code,
                r#"{"grant_types":["authorization_code","authorization_code"]}"#
            ),
            Ok(())
        );
        assert_eq!(
            scope_of(judge(
                &code,
                r#"{"grant_types":["client_credentials","client_credentials"]}"#
            )),
            Some("client-reg:grant:client_credentials".into())
        );
        // A response type that runs on a grant the scope does not permit.
        assert_eq!(
            scope_of(judge(&code, r#"{"response_types":["code id_token"]}"#)),
            Some("client-reg:grant:implicit".into())
        );
        // Unknown grant types and scope metadata in any form need the full scope.
        assert_eq!(
            scope_of(judge(&code, r#"{"grant_types":["urn:example:mine"]}"#)),
            Some("client-reg".into())
        );
        assert_eq!(
            scope_of(judge(&code, r#"{"scope":["openid"]}"#)),
            Some("client-reg".into())
        );
        assert_eq!(
            scope_of(judge(&code, r#"{"scope":"openid"}"#)),
            Some("client-reg".into())
        );
        // Two scopes, two grants; the same scope twice is one.
        let two = narrowed(&["client_credentials", "client_credentials", "device_code"]);
        assert_eq!(
            judge(
                &two,
                r#"{"grant_types":["client_credentials","urn:ietf:params:oauth:grant-type:device_code"],"response_types":[]}"#
            ),
            Ok(())
        );
    }

    #[test]
    fn what_cannot_be_judged_is_refused_not_passed() {
        let code = narrowed(&["code"]);
        for body in [
            "not json",
            "[]",
            r#"{"grant_types":"client_credentials"}"#,
            r#"{"grant_types":[1]}"#,
            r#"{"response_types":"code"}"#,
        ] {
            assert!(
                matches!(judge(&code, body), Err(Refusal::Metadata(_))),
                "{body}"
            );
        }
        // Even the full scope: privileged metadata cannot be looked for in what is not JSON.
        assert!(matches!(
            judge(&Reach::Full, "not json"),
            Err(Refusal::Metadata(_))
        ));
        assert_eq!(judge(&Reach::Master, "not json"), Ok(()));
    }

    #[test]
    fn privileged_metadata_needs_a_master_token() {
        let body = r#"{"preferred_client_id":"mine"}"#;
        assert_eq!(judge(&Reach::Master, body), Ok(()));
        assert_eq!(scope_of(judge(&Reach::Full, body)), None);
        assert_eq!(scope_of(judge(&narrowed(&["code"]), body)), None);
        assert_eq!(
            judge(
                &Reach::Open(Grants::permitted_by_scopes([Grant::AuthorizationCode])),
                body
            ),
            Err(Refusal::NeedsCredential)
        );
    }

    #[test]
    fn open_registration_answers_401_past_its_grants() {
        let open = Reach::Open(Grants::of_grant_types(["authorization_code", "implicit"]).unwrap());
        assert_eq!(
            judge(&open, r#"{"response_types":["code","id_token"]}"#),
            Ok(())
        );
        assert_eq!(
            judge(&open, r#"{"grant_types":["client_credentials"]}"#),
            Err(Refusal::NeedsCredential)
        );
        assert_eq!(
            judge(&open, r#"{"scope":"x"}"#),
            Err(Refusal::NeedsCredential)
        );
    }

    #[test]
    fn the_full_scope_wins_and_narrowed_scopes_need_the_switch() {
        let scopes = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            reach_of_scopes(
                &scopes(&["client-reg:grant:code", "client-reg"]),
                "client-reg",
                true
            ),
            Some(Reach::Full)
        );
        assert_eq!(
            reach_of_scopes(&scopes(&["client-reg:grant:code"]), "client-reg", false),
            None
        );
        assert_eq!(
            reach_of_scopes(
                &scopes(&["client-reg:grant:nonsense", "other:grant:code"]),
                "client-reg",
                true
            ),
            None
        );
    }
}
