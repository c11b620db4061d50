//! Session store API v2 (Connect2id style): sessions with lifetimes in minutes, looked up by the
//! `SID` header or by subject, deleted one by one, by subject, or all at once.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::error::StateError;
use crate::config::SessionLimits;

/// Fixed part of a stored session: times in seconds, lifetimes in minutes (-1 unlimited).
const FIXED: usize = 6 * 8 + 4;

/// A stored session: its timers, its subject, and its public JSON as the API returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub creation_time: i64,
    pub auth_time: i64,
    pub last_access: i64,
    pub max_life: i64,
    pub auth_life: i64,
    pub max_idle: i64,
    pub subject: String,
    pub json: Vec<u8>,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED + self.subject.len() + self.json.len());
        for n in [
            self.creation_time,
            self.auth_time,
            self.last_access,
            self.max_life,
            self.auth_life,
            self.max_idle,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&(self.subject.len() as u32).to_be_bytes());
        out.extend_from_slice(self.subject.as_bytes());
        out.extend_from_slice(&self.json);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let n = |i: usize| -> Option<i64> {
            Some(i64::from_be_bytes(
                bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        let sub_len = u32::from_be_bytes(bytes.get(48..52)?.try_into().ok()?) as usize;
        let subject = std::str::from_utf8(bytes.get(FIXED..FIXED + sub_len)?)
            .ok()?
            .to_string();
        Some(Record {
            creation_time: n(0)?,
            auth_time: n(1)?,
            last_access: n(2)?,
            max_life: n(3)?,
            auth_life: n(4)?,
            max_idle: n(5)?,
            subject,
            json: bytes.get(FIXED + sub_len..)?.to_vec(),
        })
    }

    /// The subject of an encoded record, without decoding the rest.
    pub fn subject_of(bytes: &[u8]) -> Option<String> {
        let sub_len = u32::from_be_bytes(bytes.get(48..52)?.try_into().ok()?) as usize;
        std::str::from_utf8(bytes.get(FIXED..FIXED + sub_len)?)
            .ok()
            .map(str::to_string)
    }

    /// The public JSON of an encoded record.
    pub fn json_of(bytes: &[u8]) -> Option<&[u8]> {
        let sub_len = u32::from_be_bytes(bytes.get(48..52)?.try_into().ok()?) as usize;
        bytes.get(FIXED + sub_len..)
    }

    /// Whether the session has expired at `now` (seconds): by `max_life` since creation,
    /// `auth_life` since authentication, or `max_idle` since the last access.
    pub fn expired(&self, now: i64) -> bool {
        let over = |start: i64, minutes: i64| {
            minutes != -1 && now >= start.saturating_add(minutes.saturating_mul(60))
        };
        over(self.creation_time, self.max_life)
            || over(self.auth_time, self.auth_life)
            || over(self.last_access, self.max_idle)
    }

    /// When an encoded record expires (seconds since the epoch): the first of its `max_life`,
    /// `auth_life` and `max_idle` deadlines; None when all are unlimited. A record that
    /// cannot be read expires at once.
    pub fn expires_at(bytes: &[u8]) -> Option<i64> {
        let n = |i: usize| -> Option<i64> {
            Some(i64::from_be_bytes(
                bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        let deadline = |start: Option<i64>, minutes: Option<i64>| match (start, minutes) {
            (Some(_), Some(-1)) => None,
            (Some(s), Some(m)) => Some(s.saturating_add(m.saturating_mul(60))),
            _ => Some(1),
        };
        [
            deadline(n(0), n(3)),
            deadline(n(1), n(4)),
            deadline(n(2), n(5)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The same check on an encoded record, reading only its fixed part.
    pub fn expired_bytes(bytes: &[u8], now: i64) -> bool {
        let n = |i: usize| -> Option<i64> {
            Some(i64::from_be_bytes(
                bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        let over = |start: Option<i64>, minutes: Option<i64>| match (start, minutes) {
            (Some(s), Some(m)) => m != -1 && now >= s.saturating_add(m.saturating_mul(60)),
            _ => true,
        };
        over(n(0), n(3)) || over(n(1), n(4)) || over(n(2), n(5))
    }
}

/// A session as a client sends it (POST, PUT).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionInput<'a> {
    #[serde(borrow)]
    sub: Option<&'a RawValue>,
    #[serde(borrow)]
    auth_time: Option<&'a RawValue>,
    #[serde(borrow)]
    acr: Option<&'a RawValue>,
    #[serde(borrow)]
    amr: Option<&'a RawValue>,
    /// Server-assigned: accepted (a client may send back what it read) and ignored.
    #[serde(borrow, rename = "creation_time")]
    _creation_time: Option<&'a RawValue>,
    #[serde(borrow)]
    max_life: Option<&'a RawValue>,
    #[serde(borrow)]
    auth_life: Option<&'a RawValue>,
    #[serde(borrow)]
    max_idle: Option<&'a RawValue>,
    #[serde(borrow)]
    claims: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

fn bad(why: impl Into<String>) -> StateError {
    StateError::InvalidInput(why.into())
}

fn parse_value(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

fn minutes(name: &str, raw: Option<&RawValue>, default: i64) -> Result<i64, StateError> {
    let Some(raw) = raw else { return Ok(default) };
    match serde_json::from_str::<i64>(raw.get()) {
        Ok(-1) => Ok(-1),
        Ok(m) if m > 0 && m <= 10 * 365 * 24 * 60 => Ok(m),
        _ => Err(bad(format!(
            "{name} must be a whole number of minutes > 0, or -1 for unlimited"
        ))),
    }
}

/// Validates a session body into a record (times from `now`; `creation_time` as given).
pub fn record_from_body(
    body: &[u8],
    limits: &SessionLimits,
    now: i64,
    creation_time: i64,
) -> Result<Record, StateError> {
    let input: SessionInput = serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("unknown field") {
            bad("The session holds an unknown field (accepted: sub, auth_time, acr, amr, creation_time, max_life, auth_life, max_idle, claims, data)")
        } else if msg.starts_with("duplicate field") {
            bad("The session holds a field twice")
        } else {
            bad("The session must be a JSON object")
        }
    })?;
    let sub: String = match input.sub {
        Some(raw) => {
            serde_json::from_str::<String>(raw.get()).map_err(|_| bad("sub must be a string"))?
        }
        None => return Err(bad("sub is required")),
    };
    if sub.is_empty() || sub.len() > 1024 {
        return Err(bad("sub must be 1 to 1024 characters"));
    }
    let auth_time = match input.auth_time {
        None => now,
        Some(raw) => match serde_json::from_str::<i64>(raw.get()) {
            Ok(t) if (0..=253_402_300_799).contains(&t) => t,
            _ => return Err(bad("auth_time must be a number of seconds since the epoch")),
        },
    };
    let mut public = Map::new();
    public.insert("sub".into(), Value::String(sub.clone()));
    public.insert("auth_time".into(), auth_time.into());
    public.insert("creation_time".into(), creation_time.into());
    if let Some(raw) = input.acr {
        match parse_value(raw) {
            v @ Value::String(_) => public.insert("acr".into(), v),
            _ => return Err(bad("acr must be a string")),
        };
    }
    if let Some(raw) = input.amr {
        match parse_value(raw) {
            Value::Array(items) if items.iter().all(Value::is_string) => {
                public.insert("amr".into(), Value::Array(items))
            }
            _ => return Err(bad("amr must be an array of strings")),
        };
    }
    let max_life = minutes("max_life", input.max_life, limits.max_life)?;
    let auth_life = minutes("auth_life", input.auth_life, limits.auth_life)?;
    let max_idle = minutes("max_idle", input.max_idle, limits.max_idle)?;
    public.insert("max_life".into(), max_life.into());
    public.insert("auth_life".into(), auth_life.into());
    public.insert("max_idle".into(), max_idle.into());
    for (name, raw) in [("claims", input.claims), ("data", input.data)] {
        if let Some(raw) = raw {
            match parse_value(raw) {
                v @ Value::Object(_) => public.insert(name.into(), v),
                _ => return Err(bad(format!("{name} must be a JSON object"))),
            };
        }
    }
    Ok(Record {
        creation_time,
        auth_time,
        last_access: now,
        max_life,
        auth_life,
        max_idle,
        subject: sub,
        json: serde_json::to_vec(&Value::Object(public)).unwrap_or_default(),
    })
}

/// A new session id: 256 random bits, base64url (RFC 4648 §5).
pub fn new_sid() -> Result<String, StateError> {
    let mut bytes = [0u8; 32];
    openssl::rand::rand_bytes(&mut bytes).map_err(|_| StateError::Corrupt("no random bytes"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::valid_sid;

    fn limits() -> SessionLimits {
        SessionLimits {
            max_life: 20160,
            auth_life: 10080,
            max_idle: 15,
        }
    }

    #[test]
    fn record_round_trip_and_expiry() {
        let r = record_from_body(
            br#"{"sub":"alice","acr":"1","amr":["pwd"],"claims":{"x":1}}"#,
            &limits(),
            1000,
            1000,
        )
        .unwrap();
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes), Some(r.clone()));
        assert_eq!(Record::subject_of(&bytes).as_deref(), Some("alice"));
        let json: Value = serde_json::from_slice(Record::json_of(&bytes).unwrap()).unwrap();
        assert_eq!(json["sub"], "alice");
        assert_eq!(json["amr"][0], "pwd");
        assert_eq!(json["max_idle"], 15);
        assert!(!r.expired(1000 + 14 * 60));
        assert!(r.expired(1000 + 15 * 60), "idle");
        assert!(!Record::expired_bytes(&bytes, 1000 + 14 * 60));
        assert!(Record::expired_bytes(&bytes, 1000 + 15 * 60));
        assert!(
            Record::expired_bytes(b"short", 0),
            "a broken record counts as expired"
        );
        let unlimited = record_from_body(
            br#"{"sub":"bob","max_life":-1,"auth_life":-1,"max_idle":-1}"#,
            &limits(),
            0,
            0,
        )
        .unwrap();
        assert!(!unlimited.expired(i64::MAX / 2));
    }

    #[test]
    fn hostile_sessions_are_invalid_input() {
        for body in [
            &br#"{}"#[..],
            br#"{"sub":5}"#,
            br#"{"sub":""}"#,
            br#"{"sub":"a","auth_time":"yesterday"}"#,
            br#"{"sub":"a","max_life":0}"#,
            br#"{"sub":"a","max_idle":-5}"#,
            br#"{"sub":"a","max_idle":1.5}"#,
            br#"{"sub":"a","amr":"pwd"}"#,
            br#"{"sub":"a","amr":[1]}"#,
            br#"{"sub":"a","claims":[]}"#,
            br#"{"sub":"a","data":"x"}"#,
            br#"{"sub":"a","colour":"red"}"#,
            br#"{"sub":"a","sub":"b"}"#,
            br#"[]"#,
            b"\xff\xfe",
            b"",
        ] {
            assert!(
                matches!(
                    record_from_body(body, &limits(), 0, 0),
                    Err(StateError::InvalidInput(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn sids() {
        let sid = new_sid().unwrap();
        assert_eq!(sid.len(), 43);
        assert!(valid_sid(&sid));
        assert!(!valid_sid(""));
        assert!(!valid_sid("a b"));
        assert!(!valid_sid("ü"));
        assert!(!valid_sid(&"a".repeat(129)));
    }
}
