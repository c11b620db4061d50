//! The state service's storage interface: one set of operations, two engines — redb (one
//! machine, a file or memory) and Redis (several instances, one state). The operations a
//! request waits on are async: Redis is called natively (its commands run on the store's own
//! runtime, no thread held), redb behind `spawn_blocking` (its transactions block). Snapshot
//! reads (`Chunks`), purges and bulk inserts stay blocking: callers run them off the
//! proxy's workers.

use crate::config::Problem;
use std::time::Duration;

use super::redb::RedbStore;
use super::redis::RedisStore;
use super::sessions::Record;
use super::store::{Change, Chunks, Commit, OffWorkers, Registered, Result, StoreError};
use crate::config::{State, StatePath};

#[derive(Clone)]
pub enum Store {
    Redb(RedbStore),
    Redis(RedisStore),
}

/// Runs blocking storage work on the blocking pool; a task that panicked is a storage failure.
async fn off_workers<T: Send + 'static, E: From<StoreError> + Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
) -> std::result::Result<T, E> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| StoreError::new("a storage task failed".into()))?
}

/// Runs a blocking redb operation on the blocking pool.
async fn on_redb<T: Send + 'static>(
    store: &RedbStore,
    f: impl FnOnce(&RedbStore) -> Result<T> + Send + 'static,
) -> Result<T> {
    let store = store.clone();
    off_workers(move || f(&store)).await
}

impl Store {
    /// A redb store (a file, or memory).
    pub fn open(path: &StatePath) -> std::result::Result<Self, Problem> {
        RedbStore::open(path).map(Store::Redb)
    }

    /// The engine `state` names.
    pub fn open_state(state: &State) -> std::result::Result<Self, Problem> {
        match &state.redis {
            Some(settings) => RedisStore::open(settings).map(Store::Redis),
            None => Store::open(&state.path),
        }
    }

    /// Shared by several instances: replay caches must live here too.
    pub fn redis(&self) -> Option<&RedisStore> {
        match self {
            Store::Redis(r) => Some(r),
            Store::Redb(_) => None,
        }
    }

    /// The shared state's `maxmemory-policy` (Redis; None with redb or when Redis does not
    /// say). Blocking.
    pub fn eviction_policy(&self) -> Result<Option<String>> {
        match self {
            Store::Redb(_) => Ok(None),
            Store::Redis(r) => r.eviction_policy(),
        }
    }

    /// Whether the storage answers (readiness). Blocking.
    pub fn ping(&self) -> Result<()> {
        match self {
            Store::Redb(_) => Ok(()),
            Store::Redis(r) => r.ping(),
        }
    }

    pub async fn put_client(&self, id: &str, record: &[u8]) -> Result<()> {
        match self {
            Store::Redb(s) => {
                let (id, record) = (id.to_owned(), record.to_vec());
                on_redb(s, move |s| s.put_client(&id, &record)).await
            }
            Store::Redis(s) => s.put_client(id, record).await,
        }
    }

    /// A new client, unless the single-use `ledger` entry was taken or the id is in use. A
    /// failure leaves neither the client nor the ledger entry behind.
    pub async fn register_client(
        &self,
        ledger: Option<&crate::auth::Ledger>,
        id: &str,
        record: &[u8],
    ) -> Result<Registered> {
        match self {
            Store::Redb(s) => {
                let ledger = ledger.map(|l| (l.key.clone(), l.expires));
                let (id, record) = (id.to_owned(), record.to_vec());
                on_redb(s, move |s| {
                    s.register_client(ledger.as_ref().map(|(k, e)| (k.as_str(), *e)), &id, &record)
                })
                .await
            }
            Store::Redis(s) => s.register_client(ledger, id, record).await,
        }
    }

    /// Replaces client `id` if it still holds `expected`: false when another write came
    /// first (of two concurrent updates from the same record, exactly one succeeds).
    pub async fn replace_client(&self, id: &str, expected: &[u8], record: &[u8]) -> Result<bool> {
        match self {
            Store::Redb(s) => {
                let (id, expected, record) = (id.to_owned(), expected.to_vec(), record.to_vec());
                on_redb(s, move |s| s.replace_client(&id, &expected, &record)).await
            }
            Store::Redis(s) => s.replace_client(id, expected, record).await,
        }
    }

    /// Takes a single-use token for a registration served elsewhere (an upstream): false if
    /// it was taken already. On an error the caller gives it back (the write may still land).
    pub async fn take_token(&self, ledger: &crate::auth::Ledger) -> Result<bool> {
        match self {
            Store::Redb(s) => {
                let (key, expires) = (ledger.key.clone(), ledger.expires);
                on_redb(s, move |s| s.take_token(&key, expires)).await
            }
            Store::Redis(s) => s.take_token(ledger).await,
        }
    }

    /// Gives back a token [`Store::take_token`] took, if this request still holds it.
    pub async fn give_back_token(&self, ledger: &crate::auth::Ledger) -> Result<()> {
        match self {
            Store::Redb(s) => {
                let key = ledger.key.clone();
                on_redb(s, move |s| s.give_back_token(&key)).await
            }
            Store::Redis(s) => s.give_back_token(ledger).await,
        }
    }

    pub async fn get_client(&self, id: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Store::Redb(s) => {
                let id = id.to_owned();
                on_redb(s, move |s| s.get_client(&id)).await
            }
            Store::Redis(s) => s.get_client(id).await,
        }
    }

    pub async fn delete_client(&self, id: &str) -> Result<bool> {
        match self {
            Store::Redb(s) => {
                let id = id.to_owned();
                on_redb(s, move |s| s.delete_client(&id)).await
            }
            Store::Redis(s) => s.delete_client(id).await,
        }
    }

    pub async fn clients(&self) -> Result<Vec<Vec<u8>>> {
        match self {
            Store::Redb(s) => on_redb(s, |s| s.clients()).await,
            Store::Redis(s) => s.clients().await,
        }
    }

    pub async fn put_session(
        &self,
        sid: &str,
        subject: &str,
        record: &[u8],
        commit: Commit,
    ) -> Result<()> {
        match self {
            Store::Redb(s) => {
                let (sid, subject, record) = (sid.to_owned(), subject.to_owned(), record.to_vec());
                on_redb(s, move |s| s.put_session(&sid, &subject, &record, commit)).await
            }
            Store::Redis(s) => {
                s.put_session(sid, subject, record, Record::expires_at(record), commit)
                    .await
            }
        }
    }

    /// Read-modify-write of one session; nothing deleted or replaced in between is written
    /// back. `f` decides the change and what the caller gets back (from the read that was
    /// written on); None when the session does not exist.
    pub async fn update_session<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        sid: &str,
        commit: Commit,
        mut f: impl FnMut(&[u8]) -> std::result::Result<(Change, T), E> + Send + 'static,
    ) -> std::result::Result<Option<T>, E> {
        match self {
            Store::Redb(s) => {
                let (s, sid) = (s.clone(), sid.to_owned());
                off_workers(move || s.update_session(&sid, commit, |b| f(b))).await
            }
            Store::Redis(s) => s.update_session(sid, commit, Record::expires_at, f).await,
        }
    }

    pub async fn get_session(&self, sid: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Store::Redb(s) => {
                let sid = sid.to_owned();
                on_redb(s, move |s| s.get_session(&sid)).await
            }
            Store::Redis(s) => s.get_session(sid).await,
        }
    }

    /// One subject's sessions, to read a chunk at a time.
    pub async fn sessions_of(&self, subject: &str) -> Result<Box<dyn Chunks>> {
        Ok(match self {
            Store::Redb(s) => {
                let subject = subject.to_owned();
                let snapshot = on_redb(s, move |s| s.sessions_of(&subject)).await?;
                Box::new(OffWorkers::new(snapshot))
            }
            Store::Redis(s) => {
                Box::new(s.subject_cursor(subject, false, Record::subject_of).await?)
            }
        })
    }

    pub async fn delete_session(&self, sid: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Store::Redb(s) => {
                let sid = sid.to_owned();
                on_redb(s, move |s| s.delete_session(&sid, Record::subject_of)).await
            }
            Store::Redis(s) => s.delete_session(sid, Record::subject_of).await,
        }
    }

    /// Every session of `subject` removed; with `keep`, what was removed, to stream.
    pub async fn delete_subject(
        &self,
        subject: &str,
        keep: bool,
    ) -> Result<Option<Box<dyn Chunks>>> {
        Ok(match self {
            Store::Redb(s) => {
                let subject = subject.to_owned();
                on_redb(s, move |s| s.delete_subject(&subject, keep))
                    .await?
                    .map(|c| Box::new(OffWorkers::new(c)) as Box<dyn Chunks>)
            }
            Store::Redis(s) => s
                .delete_subject(subject, keep, Record::subject_of)
                .await?
                .map(|c| Box::new(c) as Box<dyn Chunks>),
        })
    }

    /// Every session removed at once; with `keep`, what was removed, to stream.
    pub async fn delete_all_sessions(&self, keep: bool) -> Result<Option<Box<dyn Chunks>>> {
        Ok(match self {
            Store::Redb(s) => on_redb(s, move |s| s.delete_all_sessions(keep))
                .await?
                .map(|c| Box::new(OffWorkers::new(c)) as Box<dyn Chunks>),
            Store::Redis(s) => s
                .delete_all_sessions(keep)
                .await?
                .map(|c| Box::new(c) as Box<dyn Chunks>),
        })
    }

    /// Removes expired sessions and ledger entries (redb; Redis expires them itself).
    pub fn purge_expired(&self, now: i64) -> Result<usize> {
        let Store::Redb(s) = self else {
            return Ok(0);
        };
        let mut after: Option<String> = None;
        let mut removed = s.purge_used(now)?;
        loop {
            let (n, last) = s.purge_batch(after.as_deref(), 1000, |bytes| {
                if Record::expired_bytes(bytes, now) {
                    Some(Record::subject_of(bytes).unwrap_or_default())
                } else {
                    None
                }
            })?;
            removed += n;
            match last {
                Some(k) => after = Some(k),
                None => return Ok(removed),
            }
        }
    }

    pub fn session_count(&self) -> Result<u64> {
        match self {
            Store::Redb(s) => s.session_count(),
            Store::Redis(s) => s.session_count(),
        }
    }

    /// Inserts many sessions at once (benchmarks and imports).
    pub fn insert_sessions(
        &self,
        items: impl Iterator<Item = (String, String, Vec<u8>)>,
    ) -> Result<()> {
        match self {
            Store::Redb(s) => s.insert_sessions(items),
            Store::Redis(s) => s.insert_sessions(items, Record::expires_at),
        }
    }

    /// Records a DPoP proof's key as seen for `ttl` across instances: true the first time.
    /// None with redb (the proxy's in-process replay cache is the record then).
    pub async fn first_use(&self, key: &str, ttl: Duration) -> Option<Result<bool>> {
        match self {
            Store::Redb(_) => None,
            Store::Redis(s) => Some(s.first_use(key, ttl).await),
        }
    }
}
