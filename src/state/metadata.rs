//! RFC 7591 §2 client metadata: checked, defaults filled in, extensions kept as sent.

use serde_json::{Map, Value};

use super::error::StateError;

/// Values the server assigns; a client never sends them in metadata (RFC 7591 §3.2.1,
/// RFC 7592 §2.2).
pub const SERVER_ASSIGNED: &[&str] = &[
    "registration_access_token",
    "registration_client_uri",
    "client_id_issued_at",
    "client_secret_expires_at",
];

/// `token_endpoint_auth_method` values that authenticate with a client secret.
const SECRET_METHODS: &[&str] = &[
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
];
const AUTH_METHODS: &[&str] = &[
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
    "none",
];
/// RFC 8705 §2.1.2: exactly one of these names the expected certificate subject.
const TLS_SUBJECT_FIELDS: &[&str] = &[
    "tls_client_auth_subject_dn",
    "tls_client_auth_san_dns",
    "tls_client_auth_san_uri",
    "tls_client_auth_san_ip",
    "tls_client_auth_san_email",
];
const GRANT_TYPES: &[&str] = &[
    "authorization_code",
    "implicit",
    "password",
    "client_credentials",
    "refresh_token",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "urn:ietf:params:oauth:grant-type:saml2-bearer",
    "urn:ietf:params:oauth:grant-type:device_code",
    "urn:openid:params:grant-type:ciba",
    "urn:ietf:params:oauth:grant-type:token-exchange",
];
const STRING_FIELDS: &[&str] = &[
    "client_name",
    "client_uri",
    "logo_uri",
    "tos_uri",
    "policy_uri",
    "scope",
    "software_id",
    "software_version",
    "jwks_uri",
    "sector_identifier_uri",
    "subject_type",
    "id_token_signed_response_alg",
    "token_endpoint_auth_signing_alg",
    "application_type",
];

fn meta(why: impl Into<String>) -> StateError {
    StateError::InvalidClientMetadata(why.into())
}

fn redirect(why: impl Into<String>) -> StateError {
    StateError::InvalidRedirectUri(why.into())
}

/// The client's declared secret needs: whether its method uses a client secret.
pub fn is_confidential(metadata: &Map<String, Value>) -> bool {
    metadata
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        .is_some_and(|m| SECRET_METHODS.contains(&m))
}

fn strings(m: &Map<String, Value>, field: &str) -> Result<Option<Vec<String>>, StateError> {
    match m.get(field) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| meta(format!("{field} must be an array of strings"))),
        Some(_) => Err(meta(format!("{field} must be an array of strings"))),
    }
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// RFC 7591 §2 and RFC 8252 §7: absolute, no fragment, https — or http on a loopback host, or
/// a private-use scheme of a native app. Script-carrying schemes are refused.
fn check_redirect_uri(i: usize, uri: &str) -> Result<(), StateError> {
    let field = format!("redirect_uris[{i}]");
    if !plain(uri) {
        return Err(redirect(format!(
            "{field} holds spaces or control characters"
        )));
    }
    let parsed =
        url::Url::parse(uri).map_err(|_| redirect(format!("{field} is not an absolute URI")))?;
    if parsed.fragment().is_some() || uri.contains('#') {
        return Err(redirect(format!("{field} must not have a fragment")));
    }
    match parsed.scheme() {
        "javascript" | "data" | "vbscript" | "file" | "blob" | "about" => {
            Err(redirect(format!("{field} uses a forbidden scheme")))
        }
        "https" => match parsed.host() {
            Some(_) => Ok(()),
            None => Err(redirect(format!("{field} has no host"))),
        },
        "http" => match parsed.host() {
            Some(h) if is_loopback(&h) => Ok(()),
            _ => Err(redirect(format!(
                "{field} must use https (http is allowed for loopback hosts only)"
            ))),
        },
        // A private-use URI scheme (RFC 8252 §7.1) is a reverse domain name, with a period:
        // com.example.app:/callback. Others (view-source:, feed:, jar:, ...) are browser or
        // platform schemes, not an app's.
        s if s.contains('.') => Ok(()),
        _ => Err(redirect(format!(
            "{field} must use https, http on a loopback host, or a private-use scheme with a period (RFC 8252 §7.1)"
        ))),
    }
}

/// Whether `uri` holds no space and no control character: what is stored is exactly what was
/// validated (a URL parser trims them; a client or provider may not).
fn plain(uri: &str) -> bool {
    !uri.bytes().any(|b| b <= b' ' || b == 0x7f)
}

/// Metadata that names a web page or document of the client: absolute `https` URIs only.
const HTTPS_URI_FIELDS: &[&str] = &[
    "client_uri",
    "logo_uri",
    "tos_uri",
    "policy_uri",
    "jwks_uri",
    "sector_identifier_uri",
    "initiate_login_uri",
];

fn check_https_uris(m: &Map<String, Value>) -> Result<(), StateError> {
    for field in HTTPS_URI_FIELDS {
        let Some(v) = m.get(*field) else { continue };
        let ok = v.as_str().is_some_and(|uri| {
            plain(uri)
                && !uri.contains('#')
                && url::Url::parse(uri).is_ok_and(|u| u.scheme() == "https" && u.host().is_some())
        });
        if !ok {
            return Err(meta(format!("{field} must be an absolute https URI")));
        }
    }
    Ok(())
}

/// Checks `input` and returns the metadata to store, with RFC 7591 defaults filled in.
pub fn validate(input: Value) -> Result<Map<String, Value>, StateError> {
    let Value::Object(mut m) = input else {
        return Err(meta("The client metadata must be a JSON object"));
    };
    for field in SERVER_ASSIGNED {
        if m.contains_key(*field) {
            return Err(meta(format!(
                "{field} is assigned by the server and must not be sent"
            )));
        }
    }
    for field in STRING_FIELDS {
        if m.get(*field).is_some_and(|v| !v.is_string()) {
            return Err(meta(format!("{field} must be a string")));
        }
    }
    if strings(&m, "contacts")?.is_some_and(|c| c.iter().any(String::is_empty)) {
        return Err(meta("contacts must not hold empty strings"));
    }

    let redirect_uris = match m.get("redirect_uris") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let uri = item
                    .as_str()
                    .ok_or_else(|| redirect(format!("redirect_uris[{i}] is not a string")))?;
                check_redirect_uri(i, uri)?;
                out.push(uri.to_string());
            }
            out
        }
        Some(_) => return Err(redirect("redirect_uris must be an array of URIs")),
    };

    // RFC 7591 §2: defaults.
    let grant_types =
        strings(&m, "grant_types")?.unwrap_or_else(|| vec!["authorization_code".into()]);
    let response_types = strings(&m, "response_types")?.unwrap_or_else(|| vec!["code".into()]);
    for g in &grant_types {
        if !GRANT_TYPES.contains(&g.as_str()) && !g.contains(':') {
            return Err(meta("grant_types holds an unsupported grant type"));
        }
    }
    let mut needs_code = false;
    let mut needs_implicit = false;
    for r in &response_types {
        let parts: Vec<&str> = r.split(' ').collect();
        if r == "none" {
            continue;
        }
        if parts.is_empty()
            || parts
                .iter()
                .any(|p| !matches!(*p, "code" | "token" | "id_token"))
        {
            return Err(meta("response_types holds an unsupported response type"));
        }
        needs_code |= parts.contains(&"code");
        needs_implicit |= parts.contains(&"token") || parts.contains(&"id_token");
    }
    // RFC 7591 §2.1: grant and response types must agree.
    let has = |g: &str| grant_types.iter().any(|x| x == g);
    if needs_code && !has("authorization_code") {
        return Err(meta(
            "response_types code needs the grant type authorization_code",
        ));
    }
    if needs_implicit && !has("implicit") {
        return Err(meta(
            "response_types token or id_token needs the grant type implicit",
        ));
    }
    if has("authorization_code") && !needs_code {
        return Err(meta(
            "grant_types authorization_code needs the response type code",
        ));
    }
    if has("implicit") && !needs_implicit {
        return Err(meta(
            "grant_types implicit needs the response type token or id_token",
        ));
    }
    if (has("authorization_code") || has("implicit")) && redirect_uris.is_empty() {
        return Err(redirect(
            "redirect_uris is required for the authorization_code and implicit grants",
        ));
    }

    let method = match m.get("token_endpoint_auth_method") {
        None => "client_secret_basic".to_string(),
        Some(Value::String(s)) if AUTH_METHODS.contains(&s.as_str()) => s.clone(),
        Some(_) => return Err(meta("token_endpoint_auth_method is not supported")),
    };
    let jwks_present = m.contains_key("jwks");
    let jwks_uri_present = m.contains_key("jwks_uri");
    if jwks_present && jwks_uri_present {
        return Err(meta("jwks and jwks_uri must not both be given"));
    }
    if let Some(jwks) = m.get("jwks") {
        if !jwks.get("keys").is_some_and(Value::is_array) {
            return Err(meta("jwks must be a JWK set (an object with a keys array)"));
        }
    }
    check_https_uris(&m)?;
    let subject_fields: Vec<&str> = TLS_SUBJECT_FIELDS
        .iter()
        .copied()
        .filter(|f| m.contains_key(*f))
        .collect();
    for f in &subject_fields {
        if !m.get(*f).is_some_and(Value::is_string) {
            return Err(meta(format!("{f} must be a string")));
        }
    }
    match method.as_str() {
        "tls_client_auth" if subject_fields.len() != 1 => {
            return Err(meta(
                "tls_client_auth needs exactly one of tls_client_auth_subject_dn, tls_client_auth_san_dns, tls_client_auth_san_uri, tls_client_auth_san_ip, tls_client_auth_san_email",
            ))
        }
        "tls_client_auth" => {}
        _ if !subject_fields.is_empty() => {
            return Err(meta(format!(
                "{} is only for token_endpoint_auth_method tls_client_auth",
                subject_fields[0]
            )))
        }
        "self_signed_tls_client_auth" | "private_key_jwt" if !jwks_present && !jwks_uri_present => {
            return Err(meta(format!("{method} needs jwks or jwks_uri")));
        }
        _ => {}
    }

    m.insert("redirect_uris".into(), redirect_uris.into());
    m.insert("grant_types".into(), grant_types.into());
    m.insert("response_types".into(), response_types.into());
    m.insert("token_endpoint_auth_method".into(), method.into());
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> StateError {
        validate(v).expect_err("should be refused")
    }

    #[test]
    fn defaults_are_filled_in() {
        let m = validate(json!({"redirect_uris": ["https://app.example.com/cb"]})).unwrap();
        assert_eq!(m["grant_types"], json!(["authorization_code"]));
        assert_eq!(m["response_types"], json!(["code"]));
        assert_eq!(m["token_endpoint_auth_method"], "client_secret_basic");
        assert!(is_confidential(&m));
    }

    #[test]
    fn uri_metadata_is_absolute_https() {
        let cb = json!(["https://app.example.com/cb"]);
        for field in HTTPS_URI_FIELDS {
            assert!(
                validate(json!({"redirect_uris": cb, *field: "https://app.example.com/x"})).is_ok(),
                "{field}"
            );
            for bad in [
                json!("http://app.example.com/x"),
                json!("javascript:alert(1)"),
                json!("/relative"),
                json!("https://app.example.com/x\t"),
                json!("https://app.example.com/x#f"),
                json!(5),
            ] {
                assert!(
                    matches!(
                        err(json!({"redirect_uris": cb, *field: bad})),
                        StateError::InvalidClientMetadata(_)
                    ),
                    "{field}: {bad}"
                );
            }
        }
    }

    #[test]
    fn redirect_uris() {
        for ok in [
            "https://app.example.com/cb?x=1",
            "http://127.0.0.1:8080/cb",
            "http://[::1]/cb",
            "http://localhost/cb",
            "com.example.app:/oauth2redirect",
        ] {
            assert!(validate(json!({"redirect_uris": [ok]})).is_ok(), "{ok}");
        }
        for bad in [
            "/relative/cb",
            "https://app.example.com/cb#frag",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,hi",
            "vbscript:msgbox",
            "http://app.example.com/cb",
            "not a uri",
            "view-source:https://app.example.com/cb",
            "feed:https://app.example.com/cb",
            "jar:https://app.example.com/x.jar!/",
            "myapp:/cb",
            "https://app.example.com/cb\n",
            " https://app.example.com/cb",
            "https://app.example.com/c b",
        ] {
            assert!(
                matches!(
                    err(json!({"redirect_uris": [bad]})),
                    StateError::InvalidRedirectUri(_)
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            err(json!({"redirect_uris": "https://a.example"})),
            StateError::InvalidRedirectUri(_)
        ));
        assert!(matches!(
            err(json!({"redirect_uris": [5]})),
            StateError::InvalidRedirectUri(_)
        ));
        assert!(
            matches!(err(json!({})), StateError::InvalidRedirectUri(_)),
            "code flow needs a redirect URI"
        );
    }

    #[test]
    fn grant_and_response_types_agree() {
        let cb = json!(["https://a.example.com/cb"]);
        assert!(validate(json!({"redirect_uris": cb, "grant_types": ["implicit"], "response_types": ["id_token token"]})).is_ok());
        assert!(
            validate(json!({"grant_types": ["client_credentials"], "response_types": []})).is_ok()
        );
        for bad in [
            json!({"redirect_uris": cb, "grant_types": ["client_credentials"]}),
            json!({"redirect_uris": cb, "grant_types": ["authorization_code"], "response_types": ["token"]}),
            json!({"redirect_uris": cb, "response_types": ["code", "bogus"]}),
            json!({"redirect_uris": cb, "grant_types": ["teleport"]}),
            json!({"redirect_uris": cb, "grant_types": "authorization_code"}),
        ] {
            assert!(
                matches!(
                    validate(bad.clone()),
                    Err(StateError::InvalidClientMetadata(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn authentication_methods() {
        let base = |extra: Value| {
            let mut v = json!({"grant_types": ["client_credentials"], "response_types": []});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        let m = validate(base(json!({"token_endpoint_auth_method": "tls_client_auth", "tls_client_auth_subject_dn": "CN=client1"}))).unwrap();
        assert!(!is_confidential(&m));
        assert!(validate(base(
            json!({"token_endpoint_auth_method": "tls_client_auth"})
        ))
        .is_err());
        assert!(validate(base(json!({"token_endpoint_auth_method": "tls_client_auth", "tls_client_auth_subject_dn": "CN=a", "tls_client_auth_san_dns": "a.example"}))).is_err());
        assert!(validate(base(json!({"tls_client_auth_san_dns": "a.example"}))).is_err());
        assert!(validate(base(
            json!({"token_endpoint_auth_method": "self_signed_tls_client_auth"})
        ))
        .is_err());
        assert!(validate(base(json!({"token_endpoint_auth_method": "self_signed_tls_client_auth", "jwks": {"keys": []}}))).is_ok());
        assert!(validate(base(json!({"token_endpoint_auth_method": "private_key_jwt", "jwks_uri": "https://a.example/jwks"}))).is_ok());
        assert!(validate(base(
            json!({"jwks": {"keys": []}, "jwks_uri": "https://a.example/jwks"})
        ))
        .is_err());
        assert!(validate(base(json!({"jwks_uri": "http://a.example/jwks"}))).is_err());
        assert!(validate(base(json!({"jwks": "x"}))).is_err());
        assert!(validate(base(json!({"token_endpoint_auth_method": "magic"}))).is_err());
        assert!(validate(base(json!({"client_name": 5}))).is_err());
        assert!(validate(base(json!({"registration_access_token": "x"}))).is_err());
        assert!(validate(json!([1, 2])).is_err());
    }
}
