//! Entry points for fuzzers: each takes arbitrary bytes, runs one parser of client- or
//! operator-controlled input the way the server does, and checks what must hold of its result.
//! None may panic, hang or allocate without bound, whatever the bytes. The coverage-guided
//! targets in `fuzz/` and the mutation fuzzer of the test suite (`tests/it/fuzz.rs`) both call
//! these; `FUZZING.md` records the runs.

use http::{HeaderMap, HeaderValue, Method};
use std::path::Path;

use crate::auth::bearer::bearer_token;
use crate::auth::claims::{check_time, verify_claims, Policy};
use crate::auth::jwk::parse_jwk_set;
use crate::auth::jws::{split, typ_accepted, Header};
use crate::config::{Route, SessionLimits, Target as RouteTarget};
use crate::routing::Router;
use crate::state::clients;
use crate::state::sessions::{self, Record};
use crate::target;

/// A fuzz target: arbitrary bytes in, a panic when something that must hold does not.
pub type Target = fn(&[u8]);

/// The targets, by name (for the runners).
pub const TARGETS: &[(&str, Target)] = &[
    ("jwt", jwt),
    ("jwks", jwks),
    ("bearer", bearer),
    ("dpop_proof", dpop_proof),
    ("request_target", request_target),
    ("config", config),
    ("session_json", session_json),
    ("client_json", client_json),
];

const ISSUER: &str = "https://idp.example.com";

fn policy() -> Policy {
    Policy {
        audiences: vec!["https://idp.example.com/clients".into()],
        check_audience: true,
        scopes: vec!["client-reg".into()],
        require_certificate_binding: false,
        require_proof_of_possession: true,
    }
}

/// The claim checks of a verified token: time, policy, scope.
fn claims(payload: &[u8]) {
    if let Ok(v) = verify_claims(payload, ISSUER) {
        let _ = check_time(&v, 1_800_000_000.0, 60.0);
        let _ = policy().check_claims(&v);
        let _ = policy().check_scope(&v);
    }
}

/// A compact JWS as the token validator reads it: split, header, algorithm and type checks,
/// claims (the bytes are also taken as a payload on their own).
pub fn jwt(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    if let Some(jws) = split(&token) {
        if let Ok(header) = serde_json::from_slice::<Header>(&jws.header) {
            let _ = typ_accepted(header.typ.as_deref());
            let _ = crate::config::JwsAlgorithm::from_name(&header.alg);
        }
        claims(&jws.payload);
    }
    claims(data);
}

/// A JWK set document as fetched from the provider.
pub fn jwks(data: &[u8]) {
    if let Ok(set) = parse_jwk_set(data) {
        for key in &set.keys {
            // A parsed key has a fingerprint, and accepts at least the algorithm it names.
            if let Some(alg) = key.alg {
                assert!(key.accepts(alg), "a key refuses its own alg");
            }
        }
    }
}

/// The `Authorization` header (sent once or twice) and the query, as the authoriser reads them.
pub fn bearer(data: &[u8]) {
    let (header, query) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let query = query.map(String::from_utf8_lossy);
    let Ok(value) = HeaderValue::from_bytes(header) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value.clone());
    if let Ok(Some(token)) = bearer_token(&headers, query.as_deref()) {
        // A token is never empty and never carries the scheme or whitespace around it.
        assert!(!token.is_empty());
        assert!(!token.starts_with(' ') && !token.ends_with(' '));
    }
    headers.append(http::header::AUTHORIZATION, value);
    assert!(
        bearer_token(&headers, query.as_deref()).is_err(),
        "a token sent twice is refused"
    );
}

/// A `DPoP` header as the proof checker reads it (RFC 9449 §4.3), for `POST /clients` with an
/// access token; a proof it accepts names a key (its thumbprint is the proof's `jkt`).
pub fn dpop_proof(data: &[u8]) {
    use crate::auth::dpop::{ProofChecker, ProofRequest};
    use std::sync::OnceLock;
    static CHECKER: OnceLock<Option<ProofChecker>> = OnceLock::new();
    let Some(checker) = CHECKER.get_or_init(|| {
        let config = crate::config::Dpop {
            origins: vec!["https://localhost:8443".into()],
            max_age: std::time::Duration::from_secs(60),
            replay_cache_entries: 10_000,
            require_nonce: false,
            algorithms: crate::config::JwsAlgorithm::ALL.to_vec(),
        };
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        ProofChecker::new(&config, std::time::Duration::from_secs(60), metrics).ok()
    }) else {
        return;
    };
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert("dpop", value);
    let Ok(Some(proof)) = checker.header(&headers) else {
        return;
    };
    // iat of the seed proofs: accepted proofs are possible within the window.
    let req = ProofRequest {
        method: &Method::POST,
        path: "/clients",
        access_token: Some("an-access-token"),
        now: 1_800_000_000.0,
    };
    let _ = checker.check(proof, &req);
}

/// A request target as the gateway reads it, then routed; what is accepted is canonical.
pub fn request_target(data: &[u8]) {
    let Ok(t) = target::parse(data) else {
        return;
    };
    assert!(t.path.starts_with('/'));
    assert!(!t.path.contains("//"), "{}", t.path);
    assert!(!t.path.contains(';'), "{}", t.path);
    for seg in t.path.split('/') {
        assert!(seg != "." && seg != "..", "{}", t.path);
    }
    // Normalising the normalised path changes nothing: what is forwarded reads the same.
    let again = target::parse(t.path.as_bytes()).map(|t| t.path);
    assert_eq!(again.as_deref(), Ok(t.path.as_str()));
    let router = Router::from_parts(
        ("/clients", &RouteTarget::Embedded),
        ("/session-store/rest/v2", &RouteTarget::Embedded),
        &[Route {
            prefix: "/".into(),
            upstream: "idp".into(),
            token: None,
            upgrade: false,
        }],
    );
    for method in [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
    ] {
        let _ = router.route(&method, &t.path);
    }
}

/// `proxy.yaml` text, parsed and validated as `bindgate check` does.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = crate::config::load_str(text, Path::new("/nonexistent/proxy.yaml")) {
        // Every refusal says what is wrong.
        assert!(!e.problems.is_empty());
    }
}

/// A session body as the session store takes it, and stored bytes as it reads them back.
pub fn session_json(data: &[u8]) {
    let limits = SessionLimits {
        max_life: 60,
        auth_life: 30,
        max_idle: 15,
    };
    let now = 1_800_000_000;
    if let Ok(record) = sessions::record_from_body(data, &limits, now, now) {
        let bytes = record.encode();
        let back = Record::decode(&bytes).expect("an encoded record decodes");
        assert_eq!(back.subject, record.subject);
        assert_eq!(back.json, record.json);
        assert_eq!(
            Record::subject_of(&bytes).as_deref(),
            Some(record.subject.as_str())
        );
        assert!(serde_json::from_slice::<serde_json::Value>(&record.json).is_ok());
    }
    // Stored bytes are not trusted either (a damaged store).
    let _ = Record::decode(data);
    let _ = Record::subject_of(data);
    let _ = Record::json_of(data);
    let _ = Record::expired_bytes(data, now);
}

/// Client metadata as the registry takes it (RFC 7591 registration and RFC 7592 update).
pub fn client_json(data: &[u8]) {
    if let Ok((client, token)) = clients::register(data, 1_800_000_000, None) {
        assert!(clients::valid_client_id(&client.client_id));
        assert!(!token.is_empty());
        let view = client.view("https://idp.example.com/clients/x");
        assert!(view.contains_key("client_id"));
        let mut update = serde_json::Map::new();
        update.insert("client_id".into(), client.client_id.clone().into());
        if let Ok(serde_json::Value::Object(body)) = serde_json::from_slice(data) {
            update.extend(body);
            update.insert("client_id".into(), client.client_id.clone().into());
        }
        let _ = clients::update(&client, &serde_json::to_vec(&update).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed corpus reaches the end of each check: a seed proof made with the `openssl`
    /// command line (another implementation) is accepted, once.
    #[test]
    fn the_dpop_seed_proof_is_accepted_once() {
        use crate::auth::dpop::{ProofChecker, ProofRequest};
        let seed = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dpop_proof/seed-1"),
        )
        .unwrap();
        let config = crate::config::Dpop {
            origins: vec!["https://localhost:8443".into()],
            max_age: std::time::Duration::from_secs(60),
            replay_cache_entries: 10,
            require_nonce: false,
            algorithms: vec![crate::config::JwsAlgorithm::ES256],
        };
        let checker = ProofChecker::new(
            &config,
            std::time::Duration::from_secs(60),
            std::sync::Arc::new(crate::metrics::Metrics::new()),
        )
        .unwrap();
        let req = ProofRequest {
            method: &Method::POST,
            path: "/clients",
            access_token: Some("an-access-token"),
            now: 1_800_000_000.0,
        };
        assert!(checker.check(seed.trim(), &req).is_ok());
        assert!(checker.check(seed.trim(), &req).is_err(), "a replay");
    }
}
