//! The client registry: RFC 7591 registration and RFC 7592 management.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use super::error::StateError;
use super::metadata;

/// A client as stored. Only the SHA-256 of its registration access token is kept.
#[derive(Serialize, Deserialize, Clone)]
pub struct StoredClient {
    pub client_id: String,
    pub client_id_issued_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// Hex SHA-256 of the registration access token.
    pub registration_access_token_sha256: String,
    pub metadata: Map<String, Value>,
    /// The grants a client registered under a narrowed scope or openly keeps to on its own
    /// updates (`grant_types` values); absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_grants: Option<Vec<String>>,
}

impl StoredClient {
    /// Whether `digest` is the SHA-256 of this client's registration access token.
    pub fn token_matches(&self, digest: &[u8; 32]) -> bool {
        let stored = hex::decode(&self.registration_access_token_sha256).unwrap_or_default();
        stored.len() == 32 && bool::from(stored.as_slice().ct_eq(digest))
    }

    /// The client as the API shows it (RFC 7591 §3.2.1).
    pub fn view(&self, registration_client_uri: &str) -> Map<String, Value> {
        let mut out = self.metadata.clone();
        out.insert("client_id".into(), self.client_id.clone().into());
        out.insert(
            "client_id_issued_at".into(),
            self.client_id_issued_at.into(),
        );
        if let Some(secret) = &self.client_secret {
            out.insert("client_secret".into(), secret.clone().into());
            out.insert("client_secret_expires_at".into(), 0.into());
        }
        out.insert(
            "registration_client_uri".into(),
            registration_client_uri.into(),
        );
        out
    }
}

pub fn random(bytes: usize) -> Result<String, StateError> {
    let mut buf = vec![0u8; bytes];
    openssl::rand::rand_bytes(&mut buf).map_err(|_| StateError::Corrupt("no random bytes"))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

fn parse_body(body: &[u8]) -> Result<Value, StateError> {
    serde_json::from_slice(body)
        .map_err(|_| StateError::InvalidClientMetadata("The request body is not valid JSON".into()))
}

/// The shortest `preferred_client_secret` taken (Connect2id: 32 characters, 256 bits).
pub const MIN_PREFERRED_SECRET: usize = 32;

/// A preferred value (Connect2id's privileged metadata): a string, taken out of the metadata.
fn preferred(input: &mut Value, member: &str) -> Result<Option<String>, StateError> {
    match input.as_object_mut().and_then(|o| o.remove(member)) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(StateError::InvalidClientMetadata(format!(
            "{member} must be a string"
        ))),
    }
}

/// The digest a registration access token is kept as.
pub fn token_digest(token: &str) -> String {
    hex::encode(openssl::sha::sha256(token.as_bytes()))
}

/// A new client from a registration request, for the grants it keeps to (None: any); returns
/// it and its registration access token. `preferred_client_id` and `preferred_client_secret`
/// are honoured (whoever may send them was decided before).
pub fn register(
    body: &[u8],
    now: i64,
    registered_grants: Option<Vec<String>>,
) -> Result<(StoredClient, String), StateError> {
    let mut input = parse_body(body)?;
    for field in ["client_id", "client_secret"] {
        if input.get(field).is_some() {
            return Err(StateError::InvalidClientMetadata(format!(
                "{field} is assigned by the server and must not be sent"
            )));
        }
    }
    let preferred_id = preferred(&mut input, "preferred_client_id")?;
    let preferred_secret = preferred(&mut input, "preferred_client_secret")?;
    if let Some(id) = &preferred_id {
        if !valid_client_id(id) {
            return Err(StateError::InvalidClientMetadata(
                "preferred_client_id must be 1 to 128 characters of A-Z a-z 0-9 - _".into(),
            ));
        }
    }
    let metadata = metadata::validate(input)?;
    let confidential = metadata::is_confidential(&metadata);
    let client_secret = match (preferred_secret, confidential) {
        (Some(s), true) if s.chars().count() >= MIN_PREFERRED_SECRET => Some(s),
        (Some(_), true) => {
            return Err(StateError::InvalidClientMetadata(format!(
                "preferred_client_secret must have at least {MIN_PREFERRED_SECRET} characters"
            )))
        }
        (Some(_), false) => {
            return Err(StateError::InvalidClientMetadata(
                "preferred_client_secret is for a client that authenticates with a secret".into(),
            ))
        }
        (None, true) => Some(random(32)?),
        (None, false) => None,
    };
    let token = random(32)?;
    let client = StoredClient {
        client_id: match preferred_id {
            Some(id) => id,
            None => random(16)?,
        },
        client_id_issued_at: now,
        client_secret,
        registration_access_token_sha256: token_digest(&token),
        metadata,
        registered_grants,
    };
    Ok((client, token))
}

/// RFC 7592 §2.2: a full replacement of `current`'s metadata.
pub fn update(current: &StoredClient, body: &[u8]) -> Result<StoredClient, StateError> {
    let mut input = parse_body(body)?;
    let Some(fields) = input.as_object_mut() else {
        return Err(StateError::InvalidClientMetadata(
            "The client metadata must be a JSON object".into(),
        ));
    };
    match fields.remove("client_id") {
        Some(Value::String(id)) if id == current.client_id => {}
        Some(_) => {
            return Err(StateError::InvalidClientMetadata(
                "client_id does not match the client being updated".into(),
            ))
        }
        None => {
            return Err(StateError::InvalidClientMetadata(
                "client_id is required in an update".into(),
            ))
        }
    }
    if let Some(sent) = fields.remove("client_secret") {
        let matches = match (&sent, &current.client_secret) {
            (Value::String(s), Some(c)) => bool::from(s.as_bytes().ct_eq(c.as_bytes())),
            _ => false,
        };
        if !matches {
            return Err(StateError::InvalidClientMetadata(
                "client_secret does not match the client's secret".into(),
            ));
        }
    }
    for member in ["preferred_client_id", "preferred_client_secret"] {
        if fields.contains_key(member) {
            return Err(StateError::InvalidClientMetadata(format!(
                "{member} is taken at registration only"
            )));
        }
    }
    let metadata = metadata::validate(input)?;
    let client_secret = match (metadata::is_confidential(&metadata), &current.client_secret) {
        (true, Some(s)) => Some(s.clone()),
        (true, None) => Some(random(32)?),
        (false, _) => None,
    };
    Ok(StoredClient {
        client_id: current.client_id.clone(),
        client_id_issued_at: current.client_id_issued_at,
        client_secret,
        registration_access_token_sha256: current.registration_access_token_sha256.clone(),
        metadata,
        registered_grants: current.registered_grants.clone(),
    })
}

/// A client id as it may appear in a path: 1 to 128 base64url characters.
pub fn valid_client_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
