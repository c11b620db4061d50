//! The embedded state service: a minimal client registry (RFC 7591/7592) and session store,
//! so that bindgate runs with no provider behind it.

pub mod clients;
pub mod engine;
pub mod error;
pub mod metadata;
pub mod redb;
pub mod redis;
mod registry;
pub mod sessions;
pub mod store;

use crate::config::Problem;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::time::Duration;

use crate::auth::registration::Rules;
pub use crate::auth::Ledger;
use crate::auth::SessionPermit;
use crate::config::{Config, SessionLimits};
use crate::routing::{SessionOp, Sid};
pub use engine::Store;
pub use error::StateError;
pub use redb::{RedbStore, SessionSnapshot, SubjectSnapshot};
use sessions::Record;
pub use store::{Change, Chunks, Registered};

/// How many sessions one streamed chunk holds.
pub const STREAM_CHUNK: usize = 512;

/// An answer of the embedded service.
pub enum Reply {
    Json {
        status: u16,
        body: Vec<u8>,
        /// Registration answers carry credentials: `Cache-Control: no-store` and
        /// `Pragma: no-cache` (RFC 7591 §3.2.1). Every JSON answer is `no-store` anyway.
        pragma_no_cache: bool,
    },
    NoContent,
    /// A map sid → session (all deleted, or one subject's), streamed as one JSON object.
    Stream(Box<StreamingMap>),
}

/// A JSON map sid → session produced chunk by chunk from a snapshot (the pre-delete one of a
/// delete, or the store's for a read): memory stays flat whatever the map holds.
pub struct StreamingMap {
    snapshot: Option<Box<dyn Chunks>>,
    started: bool,
    first_entry: bool,
}

impl StreamingMap {
    pub fn new(snapshot: Box<dyn Chunks>) -> Self {
        StreamingMap {
            snapshot: Some(snapshot),
            started: false,
            first_entry: true,
        }
    }

    /// The next piece of the JSON body; None at the end.
    pub async fn next_piece(&mut self, now: i64) -> Result<Option<Vec<u8>>, StateError> {
        let Some(snapshot) = self.snapshot.as_mut() else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(64 * 1024);
        if !self.started {
            self.started = true;
            out.push(b'{');
        }
        match snapshot
            .next_chunk(STREAM_CHUNK)
            .await
            .map_err(StateError::Storage)?
        {
            Some(entries) => {
                for (sid, bytes) in entries {
                    if Record::expired_bytes(&bytes, now) {
                        continue;
                    }
                    let Some(json) = Record::json_of(&bytes) else {
                        continue;
                    };
                    if !self.first_entry {
                        out.push(b',');
                    }
                    self.first_entry = false;
                    out.extend_from_slice(
                        serde_json::to_string(&sid).unwrap_or_default().as_bytes(),
                    );
                    out.push(b':');
                    out.extend_from_slice(json);
                }
            }
            None => {
                out.push(b'}');
                self.snapshot = None;
            }
        }
        Ok(Some(out))
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn json(status: u16, value: &serde_json::Value) -> Reply {
    Reply::Json {
        status,
        body: serde_json::to_vec(value).unwrap_or_default(),
        pragma_no_cache: false,
    }
}

#[derive(Clone)]
pub struct StateService {
    store: Store,
    limits: SessionLimits,
    registration_uri: String,
    /// What a client's own token may ask for on an update.
    rules: Rules,
    /// `registration.rotate_registration_access_token`.
    rotate_token: bool,
}

impl StateService {
    pub fn new(config: &Config) -> Result<Self, Problem> {
        Ok(Self::with_store(config, Store::open_state(&config.state)?))
    }

    /// The service on an engine already opened.
    pub fn with_store(config: &Config, store: Store) -> Self {
        let registration_uri = config
            .registration
            .endpoint_uri
            .clone()
            .unwrap_or_else(|| config.registration.path.clone());
        StateService {
            store,
            limits: config.state.sessions,
            registration_uri,
            rules: Rules::of(&config.registration),
            rotate_token: config.registration.rotate_registration_access_token,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A session-store operation, as its permit read it.
    pub async fn sessions(&self, permit: &SessionPermit, body: Bytes) -> Result<Reply, StateError> {
        let request = permit.request().clone();
        let sid = match request.sid {
            Sid::Absent => None,
            Sid::Given(ref sid) => Some(sid.clone()),
            Sid::Malformed => return Err(StateError::InvalidInput("Malformed SID header".into())),
        };
        let q = request;
        let at = now();
        let need = || {
            StateError::InvalidInput(
                "Give the SID header, or the subject (or all=true for delete) parameter".into(),
            )
        };
        match q.op {
            SessionOp::Create => {
                let record = sessions::record_from_body(&body, &self.limits, at, at)?;
                let sid = sessions::new_sid()?;
                self.store
                    .put_session(
                        &sid,
                        &record.subject,
                        &record.encode(),
                        store::Commit::Durable,
                    )
                    .await
                    .map_err(StateError::Storage)?;
                Ok(json(201, &serde_json::json!({ "sid": sid })))
            }
            SessionOp::Read => match (sid, q.subject) {
                (Some(sid), _) => {
                    // A read is activity (max_idle): the last access is updated in the same
                    // transaction that reads, so a session deleted meanwhile stays deleted.
                    // Losing the update in a crash only shortens the session. With
                    // skip_last_used_update=true, nothing is written.
                    let touch = !q.skip_last_used_update;
                    let found = self
                        .store
                        .update_session(&sid, store::Commit::Lazy, move |bytes| {
                            let Some(mut record) = Record::decode(bytes).filter(|r| !r.expired(at))
                            else {
                                return Ok::<_, StateError>((Change::Keep, None));
                            };
                            if !touch {
                                return Ok((Change::Keep, Some(record.json)));
                            }
                            record.last_access = at;
                            let change = Change::Write {
                                old_subject: record.subject.clone(),
                                subject: record.subject.clone(),
                                record: record.encode(),
                            };
                            Ok((change, Some(record.json)))
                        })
                        .await?;
                    Ok(Reply::Json {
                        status: 200,
                        body: found.flatten().ok_or(StateError::NotFound("Session"))?,
                        pragma_no_cache: false,
                    })
                }
                (None, Some(subject)) => {
                    let snapshot = self
                        .store
                        .sessions_of(&subject)
                        .await
                        .map_err(StateError::Storage)?;
                    Ok(Reply::Stream(Box::new(StreamingMap::new(snapshot))))
                }
                (None, None) => Err(need()),
            },
            SessionOp::Replace => {
                let sid = sid.ok_or_else(need)?;
                // Read and replaced in one transaction: a concurrent delete is not undone.
                let limits = self.limits;
                let replaced = self
                    .store
                    .update_session(&sid, store::Commit::Durable, move |bytes| {
                        let Some(old) = Record::decode(bytes).filter(|r| !r.expired(at)) else {
                            return Ok::<_, StateError>((Change::Keep, false));
                        };
                        let record =
                            sessions::record_from_body(&body, &limits, at, old.creation_time)?;
                        let change = Change::Write {
                            old_subject: old.subject,
                            subject: record.subject.clone(),
                            record: record.encode(),
                        };
                        Ok((change, true))
                    })
                    .await?;
                if replaced != Some(true) {
                    return Err(StateError::NotFound("Session"));
                }
                Ok(Reply::NoContent)
            }
            SessionOp::Delete => match (sid, q.subject, q.all) {
                (Some(sid), _, _) => {
                    let removed = self
                        .store
                        .delete_session(&sid)
                        .await
                        .map_err(StateError::Storage)?
                        .filter(|b| !Record::expired_bytes(b, at))
                        .ok_or(StateError::NotFound("Session"))?;
                    if q.quiet {
                        return Ok(Reply::NoContent);
                    }
                    Ok(Reply::Json {
                        status: 200,
                        body: Record::json_of(&removed).unwrap_or(b"{}").to_vec(),
                        pragma_no_cache: false,
                    })
                }
                (None, Some(subject), _) => {
                    let snapshot = self
                        .store
                        .delete_subject(&subject, !q.quiet)
                        .await
                        .map_err(StateError::Storage)?;
                    match snapshot {
                        None => Ok(Reply::NoContent),
                        Some(s) => Ok(Reply::Stream(Box::new(StreamingMap::new(s)))),
                    }
                }
                (None, None, true) => {
                    let snapshot = self
                        .store
                        .delete_all_sessions(!q.quiet)
                        .await
                        .map_err(StateError::Storage)?;
                    match snapshot {
                        None => Ok(Reply::NoContent),
                        Some(s) => Ok(Reply::Stream(Box::new(StreamingMap::new(s)))),
                    }
                }
                (None, None, false) => Err(need()),
            },
        }
    }

    /// Removes expired sessions and single-use ledger entries (redb; Redis expires its keys
    /// itself); the number removed.
    pub fn purge_expired(&self) -> Result<usize, store::StoreError> {
        self.store.purge_expired(now())
    }
}

/// Purges expired sessions every `interval`.
pub struct SessionPurger {
    pub state: StateService,
    /// How often expired sessions are removed (redb; Redis expires them itself).
    pub interval: Duration,
    /// How often the sessions stored are counted into `sessions`.
    pub count_every: Duration,
    /// `bindgate_sessions`.
    pub sessions: prometheus::IntGauge,
}

#[async_trait]
impl BackgroundService for SessionPurger {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last_purge = std::time::Instant::now();
        loop {
            let store = self.state.store.clone();
            match tokio::task::spawn_blocking(move || store.session_count()).await {
                Ok(Ok(n)) => self.sessions.set(i64::try_from(n).unwrap_or(i64::MAX)),
                Ok(Err(e)) => {
                    tracing::debug!(target: "bindgate::state", "sessions not counted: {e}")
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.count_every) => {}
            }
            if last_purge.elapsed() < self.interval {
                continue;
            }
            last_purge = std::time::Instant::now();
            let state = self.state.clone();
            match tokio::task::spawn_blocking(move || state.purge_expired()).await {
                Ok(Ok(n)) if n > 0 => {
                    tracing::info!(target: "bindgate::state", removed = n, "expired sessions purged")
                }
                Ok(Err(e)) => {
                    tracing::warn!(target: "bindgate::state", "session purge failed: {e}")
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StatePath;

    /// A state service on an in-memory store.
    fn in_memory(limits: SessionLimits) -> StateService {
        StateService {
            store: Store::open(&StatePath::Memory).unwrap(),
            limits,
            registration_uri: "https://idp.example.com/clients".into(),
            rules: Rules {
                full_scope: "client-reg".into(),
                privileged: Vec::new(),
            },
            rotate_token: false,
        }
    }

    async fn all_of(store: &Store, subject: &str) -> store::Entries {
        let mut snapshot = store.sessions_of(subject).await.unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = snapshot.next_chunk(3).await.unwrap() {
            out.extend(chunk);
        }
        out
    }

    #[tokio::test]
    async fn purge_removes_expired_sessions_only() {
        let limits = SessionLimits {
            max_life: 60,
            auth_life: 30,
            max_idle: 15,
        };
        let state = in_memory(limits);
        let at = now();
        let mut items = Vec::new();
        for i in 0..2500 {
            // Every third session authenticated two hours ago: past its 30-minute auth_life.
            let auth_time = if i % 3 == 0 { at - 7200 } else { at };
            let body = format!(r#"{{"sub":"user-{}","auth_time":{auth_time}}}"#, i % 7);
            let r = sessions::record_from_body(body.as_bytes(), &limits, at, at).unwrap();
            items.push((format!("sid-{i:05}"), r.subject.clone(), r.encode()));
        }
        state.store.insert_sessions(items.into_iter()).unwrap();
        assert_eq!(state.purge_expired().unwrap(), 834);
        assert_eq!(state.store.session_count().unwrap(), 2500 - 834);
        assert!(state
            .store
            .get_session("sid-00000")
            .await
            .unwrap()
            .is_none());
        assert!(state
            .store
            .get_session("sid-00001")
            .await
            .unwrap()
            .is_some());
        // The subject index no longer lists purged sessions.
        let listed = all_of(&state.store, "user-0").await;
        assert!(listed.iter().all(|(sid, _)| sid != "sid-00000"));
        assert_eq!(state.purge_expired().unwrap(), 0);
    }

    #[tokio::test]
    async fn update_session_never_writes_back_what_is_gone() {
        let store = Store::open(&StatePath::Memory).unwrap();
        let write = |subject: &str, record: &[u8]| Change::Write {
            old_subject: "alice".into(),
            subject: subject.into(),
            record: record.to_vec(),
        };
        // Absent: f is not called and nothing is created.
        let existed = store
            .update_session("sid-1", store::Commit::Durable, move |_| {
                Ok::<_, StateError>((write("alice", b"x"), ()))
            })
            .await
            .unwrap();
        assert!(existed.is_none());
        assert!(store.get_session("sid-1").await.unwrap().is_none());
        store
            .put_session("sid-1", "alice", b"v1", store::Commit::Durable)
            .await
            .unwrap();
        // f's error aborts: the record stays as it was.
        let err = store
            .update_session("sid-1", store::Commit::Durable, |_| {
                Err::<(Change, ()), _>(StateError::InvalidInput("no".into()))
            })
            .await;
        assert!(err.is_err());
        assert_eq!(store.get_session("sid-1").await.unwrap().unwrap(), b"v1");
        // A write moves the subject index with the subject.
        let old = store
            .update_session("sid-1", store::Commit::Durable, move |old| {
                Ok::<_, StateError>((write("bob", b"v2"), old.to_vec()))
            })
            .await
            .unwrap();
        assert_eq!(old.as_deref(), Some(&b"v1"[..]));
        assert!(all_of(&store, "alice").await.is_empty());
        assert_eq!(all_of(&store, "bob").await.len(), 1);
    }

    #[tokio::test]
    async fn a_read_with_skip_last_used_update_leaves_the_idle_deadline() {
        use crate::routing::{SessionOp, SessionRequest, Sid};
        let limits = SessionLimits {
            max_life: 600,
            auth_life: 600,
            max_idle: 600,
        };
        let state = in_memory(limits);
        let at = now();
        let mut record =
            sessions::record_from_body(br#"{"sub":"alice"}"#, &limits, at, at).unwrap();
        record.last_access = at - 100;
        state
            .store
            .insert_sessions(
                [("sid-a".to_string(), "alice".to_string(), record.encode())].into_iter(),
            )
            .unwrap();
        let last_access = || async {
            Record::decode(&state.store.get_session("sid-a").await.unwrap().unwrap())
                .unwrap()
                .last_access
        };
        let read = |skip: bool| {
            SessionPermit::for_tests(SessionRequest {
                op: SessionOp::Read,
                sid: Sid::Given("sid-a".into()),
                subject: None,
                all: false,
                quiet: false,
                skip_last_used_update: skip,
            })
        };
        assert!(matches!(
            state.sessions(&read(true), Bytes::new()).await,
            Ok(Reply::Json { status: 200, .. })
        ));
        assert_eq!(last_access().await, at - 100);
        assert!(matches!(
            state.sessions(&read(false), Bytes::new()).await,
            Ok(Reply::Json { status: 200, .. })
        ));
        assert!(last_access().await >= at);
    }
}
