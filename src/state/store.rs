//! Storage of the embedded state service on redb: a file (`fsync` on every commit that answers
//! a write, so an acknowledged write survives `kill -9`) or memory (`:memory:`).

use redb::backends::InMemoryBackend;
use redb::{
    Database, Durability, MultimapTableDefinition, MultimapTableHandle, ReadTransaction,
    ReadableDatabase, ReadableMultimapTable, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableHandle,
};
use std::ops::Bound;
use std::sync::Arc;

use crate::config::StatePath;

/// How long a start waits for another process to release the database file.
const OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("clients");
/// The single-use ledger of initial access tokens: key → expiry (seconds since the epoch).
const USED: TableDefinition<&str, i64> = TableDefinition::new("used_tokens");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GENERATION: &str = "sessions_generation";

/// The subject index of stores written before the index became a range table: migrated into
/// the new table at start.
fn legacy_index(n: u64) -> String {
    format!("sessions_by_subject.{n}")
}

/// (subject, sid) bounds of one subject's range in the index.
type IndexKey<'a> = (&'a str, &'a str);

/// The session tables of one generation. A delete-all switches to a new, empty generation in
/// one small commit (so its answer starts at once, whatever the store holds) and drops the old
/// tables afterwards, off the request path.
#[derive(Clone, Debug)]
struct Generation {
    n: u64,
    sessions: String,
    by_subject: String,
}

impl Generation {
    fn of(n: u64) -> Self {
        Generation {
            n,
            sessions: format!("sessions.{n}"),
            by_subject: format!("sessions_by_subject_v2.{n}"),
        }
    }

    fn sessions(&self) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(&self.sessions)
    }

    /// The subject index: (subject, sid) keys in order, so that one subject's sessions are a
    /// range that can be read a chunk at a time.
    fn by_subject(&self) -> TableDefinition<'_, (&'static str, &'static str), ()> {
        TableDefinition::new(&self.by_subject)
    }
}

/// The current generation, as this write transaction sees it.
fn gen_w(txn: &redb::WriteTransaction) -> Result<Generation> {
    let meta = txn.open_table(META).map_err(fail)?;
    let n = meta
        .get(GENERATION)
        .map_err(fail)?
        .map(|v| v.value())
        .unwrap_or(0);
    Ok(Generation::of(n))
}

/// The current generation, as this snapshot sees it.
fn gen_r(txn: &ReadTransaction) -> Result<Generation> {
    let meta = txn.open_table(META).map_err(fail)?;
    let n = meta
        .get(GENERATION)
        .map_err(fail)?
        .map(|v| v.value())
        .unwrap_or(0);
    Ok(Generation::of(n))
}

/// The storage failed (disk full, I/O error, corruption).
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(String);

impl StoreError {
    pub fn new(why: String) -> Self {
        StoreError(why)
    }
}

fn fail(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

type Result<T> = std::result::Result<T, StoreError>;

/// Sessions as stored: (sid, encoded record).
pub type Entries = Vec<(String, Vec<u8>)>;

/// How much a commit must survive.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// On disk before the call returns (writes that are acknowledged to a client).
    Durable,
    /// May be lost in a crash (bookkeeping such as a session's last access).
    Lazy,
}

/// What [`Store::update_session`] does with the record it read.
pub enum Change {
    /// Leave it as it is.
    Keep,
    /// Store `record`; the subject index moves when the subject changed.
    Write {
        old_subject: String,
        subject: String,
        record: Vec<u8>,
    },
}

#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
}

impl RedbStore {
    pub fn open(path: &StatePath) -> std::result::Result<Self, String> {
        let mut builder = Database::builder();
        // The page cache would otherwise grow to 1 GiB while a large store is read.
        builder.set_cache_size(16 * 1024 * 1024);
        let db = match path {
            StatePath::Memory => builder
                .create_with_backend(InMemoryBackend::new())
                .map_err(|e| format!("state: in-memory store: {e}"))?,
            StatePath::File(file) => {
                if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("state.path: cannot create {}: {e}", dir.display()))?;
                }
                // During a binary upgrade the old process holds the file until it has drained:
                // wait for it (its listeners keep the connections meanwhile), bounded.
                let deadline = std::time::Instant::now() + OPEN_WAIT;
                let mut told = false;
                loop {
                    match builder.create(file) {
                        Ok(db) => break db,
                        Err(redb::DatabaseError::DatabaseAlreadyOpen)
                            if std::time::Instant::now() < deadline =>
                        {
                            if !told {
                                tracing::info!(
                                    target: "bindgate::state",
                                    "{} is held by another process (an upgrade draining?): waiting",
                                    file.display()
                                );
                                told = true;
                            }
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        Err(e) => return Err(format!("state.path: {}: {e}", file.display())),
                    }
                }
            }
        };
        // Create the tables once, so that readers never meet a missing table, and drop session
        // generations a crash left behind after a delete-all.
        let store = RedbStore { db: Arc::new(db) };
        store
            .write(Commit::Durable, |txn| {
                txn.open_table(CLIENTS).map_err(fail)?;
                txn.open_table(USED).map_err(fail)?;
                let current = gen_w(txn)?;
                txn.open_table(current.sessions()).map_err(fail)?;
                let mut index = txn.open_table(current.by_subject()).map_err(fail)?;
                let legacy: Vec<String> = txn
                    .list_multimap_tables()
                    .map_err(fail)?
                    .map(|t| t.name().to_string())
                    .filter(|n| n.starts_with("sessions_by_subject."))
                    .collect();
                for name in legacy {
                    let def = MultimapTableDefinition::<&str, &str>::new(&name);
                    if name == legacy_index(current.n) {
                        let old = txn.open_multimap_table(def).map_err(fail)?;
                        for entry in old.iter().map_err(fail)? {
                            let (subject, sids) = entry.map_err(fail)?;
                            for sid in sids {
                                let sid = sid.map_err(fail)?;
                                index
                                    .insert((subject.value(), sid.value()), ())
                                    .map_err(fail)?;
                            }
                        }
                    }
                    txn.delete_multimap_table(def).map_err(fail)?;
                }
                drop(index);
                let stale: Vec<String> = txn
                    .list_tables()
                    .map_err(fail)?
                    .map(|t| t.name().to_string())
                    .filter(|n| {
                        (n.starts_with("sessions.") && *n != current.sessions)
                            || (n.starts_with("sessions_by_subject_v2.")
                                && *n != current.by_subject)
                    })
                    .collect();
                for name in stale {
                    if name.starts_with("sessions.") {
                        txn.delete_table(TableDefinition::<&str, &[u8]>::new(&name))
                            .map_err(fail)?;
                    } else {
                        txn.delete_table(TableDefinition::<IndexKey, ()>::new(&name))
                            .map_err(fail)?;
                    }
                }
                Ok(())
            })
            .map_err(|e| format!("state.path: {e}"))?;
        Ok(store)
    }

    fn write<T>(
        &self,
        commit: Commit,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        let mut txn = self.db.begin_write().map_err(fail)?;
        if commit == Commit::Lazy {
            txn.set_durability(Durability::None).map_err(fail)?;
        }
        let out = f(&txn)?;
        txn.commit().map_err(fail)?;
        Ok(out)
    }

    fn read(&self) -> Result<ReadTransaction> {
        self.db.begin_read().map_err(fail)
    }

    // Clients

    pub fn put_client(&self, id: &str, record: &[u8]) -> Result<()> {
        self.write(Commit::Durable, |txn| {
            txn.open_table(CLIENTS)
                .map_err(fail)?
                .insert(id, record)
                .map_err(fail)?;
            Ok(())
        })
    }

    /// Stores a new client unless `ledger` (key, expiry) was used already: false then, and
    /// nothing is stored. Ledger entry and client are one transaction: a failed registration
    /// does not use the token up, and of two concurrent uses exactly one commits.
    pub fn register_client(
        &self,
        ledger: Option<(&str, i64)>,
        id: &str,
        record: &[u8],
    ) -> Result<bool> {
        self.write(Commit::Durable, |txn| {
            if let Some((key, exp)) = ledger {
                let mut used = txn.open_table(USED).map_err(fail)?;
                if used.get(key).map_err(fail)?.is_some() {
                    return Ok(false);
                }
                used.insert(key, exp).map_err(fail)?;
            }
            txn.open_table(CLIENTS)
                .map_err(fail)?
                .insert(id, record)
                .map_err(fail)?;
            Ok(true)
        })
    }

    /// Takes ledger entry `key` (until `exp`) unless it is taken: whether it was free.
    pub fn take_token(&self, key: &str, exp: i64) -> Result<bool> {
        self.write(Commit::Durable, |txn| {
            let mut used = txn.open_table(USED).map_err(fail)?;
            if used.get(key).map_err(fail)?.is_some() {
                return Ok(false);
            }
            used.insert(key, exp).map_err(fail)?;
            Ok(true)
        })
    }

    /// Gives ledger entry `key` back (one process holds it: no other request took it since).
    pub fn give_back_token(&self, key: &str) -> Result<()> {
        self.write(Commit::Durable, |txn| {
            txn.open_table(USED)
                .map_err(fail)?
                .remove(key)
                .map_err(fail)?;
            Ok(())
        })
    }

    /// Forgets ledger entries whose token expired before `now`; how many.
    pub fn purge_used(&self, now: i64) -> Result<usize> {
        let doomed: Vec<String> = {
            let txn = self.read()?;
            let table = txn.open_table(USED).map_err(fail)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(fail)? {
                let (k, exp) = entry.map_err(fail)?;
                if exp.value() < now {
                    out.push(k.value().to_string());
                }
            }
            out
        };
        if !doomed.is_empty() {
            self.write(Commit::Lazy, |txn| {
                let mut table = txn.open_table(USED).map_err(fail)?;
                for k in &doomed {
                    table.remove(k.as_str()).map_err(fail)?;
                }
                Ok(())
            })?;
        }
        Ok(doomed.len())
    }

    pub fn get_client(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.read()?;
        let table = txn.open_table(CLIENTS).map_err(fail)?;
        Ok(table.get(id).map_err(fail)?.map(|v| v.value().to_vec()))
    }

    pub fn delete_client(&self, id: &str) -> Result<bool> {
        self.write(Commit::Durable, |txn| {
            let mut table = txn.open_table(CLIENTS).map_err(fail)?;
            let removed = table.remove(id).map_err(fail)?.is_some();
            Ok(removed)
        })
    }

    pub fn clients(&self) -> Result<Vec<Vec<u8>>> {
        let txn = self.read()?;
        let table = txn.open_table(CLIENTS).map_err(fail)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(fail)? {
            let (_, v) = entry.map_err(fail)?;
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    // Sessions

    pub fn put_session(
        &self,
        sid: &str,
        subject: &str,
        record: &[u8],
        commit: Commit,
    ) -> Result<()> {
        self.write(commit, |txn| {
            let g = gen_w(txn)?;
            txn.open_table(g.sessions())
                .map_err(fail)?
                .insert(sid, record)
                .map_err(fail)?;
            txn.open_table(g.by_subject())
                .map_err(fail)?
                .insert((subject, sid), ())
                .map_err(fail)?;
            Ok(())
        })
    }

    /// Read-modify-write of one session inside one write transaction, so that nothing
    /// deleted or replaced in between is written back: `f` sees the current record and says
    /// what to store. False when the session does not exist (then `f` is not called).
    pub fn update_session<E: From<StoreError>>(
        &self,
        sid: &str,
        commit: Commit,
        f: impl FnOnce(&[u8]) -> std::result::Result<Change, E>,
    ) -> std::result::Result<bool, E> {
        let mut txn = self.db.begin_write().map_err(fail)?;
        if commit == Commit::Lazy {
            txn.set_durability(Durability::None).map_err(fail)?;
        }
        let g = gen_w(&txn)?;
        let change = {
            let sessions = txn.open_table(g.sessions()).map_err(fail)?;
            let current = sessions.get(sid).map_err(fail)?;
            current.map(|v| f(v.value()))
        };
        let (old_subject, subject, record) = match change {
            None => {
                txn.abort().map_err(fail)?;
                return Ok(false);
            }
            Some(Err(e)) => {
                txn.abort().map_err(fail)?;
                return Err(e);
            }
            Some(Ok(Change::Keep)) => {
                txn.abort().map_err(fail)?;
                return Ok(true);
            }
            Some(Ok(Change::Write {
                old_subject,
                subject,
                record,
            })) => (old_subject, subject, record),
        };
        txn.open_table(g.sessions())
            .map_err(fail)?
            .insert(sid, record.as_slice())
            .map_err(fail)?;
        if old_subject != subject {
            let mut index = txn.open_table(g.by_subject()).map_err(fail)?;
            index.remove((old_subject.as_str(), sid)).map_err(fail)?;
            index.insert((subject.as_str(), sid), ()).map_err(fail)?;
        }
        txn.commit().map_err(fail)?;
        Ok(true)
    }

    pub fn get_session(&self, sid: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.read()?;
        let g = gen_r(&txn)?;
        let table = txn.open_table(g.sessions()).map_err(fail)?;
        Ok(table.get(sid).map_err(fail)?.map(|v| v.value().to_vec()))
    }

    /// The sessions of `subject`, read a chunk at a time from one snapshot.
    pub fn sessions_of(&self, subject: &str) -> Result<SubjectSnapshot> {
        let txn = self.read()?;
        let generation = gen_r(&txn)?;
        Ok(SubjectSnapshot {
            txn,
            generation,
            subject: subject.to_string(),
            after: None,
            done: false,
        })
    }

    /// Removes one session; its record, if it existed.
    pub fn delete_session(
        &self,
        sid: &str,
        subject_of: impl Fn(&[u8]) -> Option<String>,
    ) -> Result<Option<Vec<u8>>> {
        self.write(Commit::Durable, |txn| {
            let g = gen_w(txn)?;
            let mut sessions = txn.open_table(g.sessions()).map_err(fail)?;
            let removed = sessions
                .remove(sid)
                .map_err(fail)?
                .map(|v| v.value().to_vec());
            if let Some(record) = &removed {
                if let Some(subject) = subject_of(record) {
                    txn.open_table(g.by_subject())
                        .map_err(fail)?
                        .remove((subject.as_str(), sid))
                        .map_err(fail)?;
                }
            }
            Ok(removed)
        })
    }

    /// Removes every session of `subject`, a batch of index entries at a time (memory stays
    /// flat whatever the subject holds). With `keep_snapshot`, the deleted sessions stay
    /// readable from the returned snapshot, taken just before the delete.
    pub fn delete_subject(
        &self,
        subject: &str,
        keep_snapshot: bool,
    ) -> Result<Option<SubjectSnapshot>> {
        let txn = self.db.begin_write().map_err(fail)?;
        // Begun while this transaction holds the writer lock: exactly the state being deleted.
        let snapshot = if keep_snapshot {
            Some(self.read()?)
        } else {
            None
        };
        let g = gen_w(&txn)?;
        {
            let mut index = txn.open_table(g.by_subject()).map_err(fail)?;
            let mut sessions = txn.open_table(g.sessions()).map_err(fail)?;
            loop {
                let mut batch: Vec<String> = Vec::with_capacity(1024);
                for entry in index
                    .range::<IndexKey>((subject, "")..)
                    .map_err(fail)?
                    .take(1024)
                {
                    let (k, _) = entry.map_err(fail)?;
                    let (s, sid) = k.value();
                    if s != subject {
                        break;
                    }
                    batch.push(sid.to_string());
                }
                for sid in &batch {
                    index.remove((subject, sid.as_str())).map_err(fail)?;
                    sessions.remove(sid.as_str()).map_err(fail)?;
                }
                if batch.len() < 1024 {
                    break;
                }
            }
        }
        txn.commit().map_err(fail)?;
        Ok(snapshot.map(|txn| SubjectSnapshot {
            txn,
            generation: g,
            subject: subject.to_string(),
            after: None,
            done: false,
        }))
    }

    /// Removes every session at once: one small commit switches to an empty generation. With
    /// `keep_snapshot`, the deleted sessions stay readable from the returned snapshot (MVCC:
    /// nothing is copied) until it is dropped. The old tables are dropped on another thread.
    pub fn delete_all_sessions(&self, keep_snapshot: bool) -> Result<Option<SessionSnapshot>> {
        let txn = self.db.begin_write().map_err(fail)?;
        // Begun while this transaction holds the writer lock: exactly the state being deleted.
        let snapshot = if keep_snapshot {
            Some(self.read()?)
        } else {
            None
        };
        let old = gen_w(&txn)?;
        let next = Generation::of(old.n + 1);
        txn.open_table(META)
            .map_err(fail)?
            .insert(GENERATION, next.n)
            .map_err(fail)?;
        txn.open_table(next.sessions()).map_err(fail)?;
        txn.open_table(next.by_subject()).map_err(fail)?;
        txn.commit().map_err(fail)?;
        let store = self.clone();
        let doomed = old.clone();
        std::thread::spawn(move || {
            let dropped = store.write(Commit::Durable, |txn| {
                txn.delete_table(doomed.sessions()).map_err(fail)?;
                txn.delete_table(doomed.by_subject()).map_err(fail)?;
                Ok(())
            });
            if let Err(e) = dropped {
                tracing::warn!(target: "bindgate::state", "dropping deleted sessions failed (retried at next start): {e}");
            }
        });
        Ok(snapshot.map(|txn| SessionSnapshot {
            txn,
            generation: old,
            after: None,
            done: false,
        }))
    }

    /// Calls `expired` on up to `batch` sessions after `after` and removes those it says are;
    /// the last key seen (to resume from), or None at the end.
    pub fn purge_batch(
        &self,
        after: Option<&str>,
        batch: usize,
        expired: impl Fn(&[u8]) -> Option<String>,
    ) -> Result<(usize, Option<String>)> {
        let (doomed, last) = {
            let txn = self.read()?;
            let g = gen_r(&txn)?;
            let table = txn.open_table(g.sessions()).map_err(fail)?;
            let range = match after {
                Some(k) => table.range::<&str>((Bound::Excluded(k), Bound::Unbounded)),
                None => table.range::<&str>(..),
            }
            .map_err(fail)?;
            let mut doomed = Vec::new();
            let mut last = None;
            for entry in range.take(batch) {
                let (k, v) = entry.map_err(fail)?;
                if let Some(subject) = expired(v.value()) {
                    doomed.push((k.value().to_string(), subject));
                }
                last = Some(k.value().to_string());
            }
            (doomed, last)
        };
        if !doomed.is_empty() {
            self.write(Commit::Lazy, |txn| {
                let g = gen_w(txn)?;
                let mut sessions = txn.open_table(g.sessions()).map_err(fail)?;
                let mut index = txn.open_table(g.by_subject()).map_err(fail)?;
                for (sid, subject) in &doomed {
                    sessions.remove(sid.as_str()).map_err(fail)?;
                    index
                        .remove((subject.as_str(), sid.as_str()))
                        .map_err(fail)?;
                }
                Ok(())
            })?;
        }
        Ok((doomed.len(), last))
    }

    pub fn session_count(&self) -> Result<u64> {
        let txn = self.read()?;
        let g = gen_r(&txn)?;
        txn.open_table(g.sessions())
            .map_err(fail)?
            .len()
            .map_err(fail)
    }

    /// Inserts many sessions in one transaction (benchmarks and imports).
    pub fn insert_sessions(
        &self,
        items: impl Iterator<Item = (String, String, Vec<u8>)>,
    ) -> Result<()> {
        self.write(Commit::Durable, |txn| {
            let g = gen_w(txn)?;
            let mut sessions = txn.open_table(g.sessions()).map_err(fail)?;
            let mut index = txn.open_table(g.by_subject()).map_err(fail)?;
            for (sid, subject, record) in items {
                sessions
                    .insert(sid.as_str(), record.as_slice())
                    .map_err(fail)?;
                index
                    .insert((subject.as_str(), sid.as_str()), ())
                    .map_err(fail)?;
            }
            Ok(())
        })
    }
}

/// The sessions as they were just before a delete-all, read in chunks.
/// Sessions read from a snapshot a chunk at a time.
pub trait Chunks: Send {
    /// The next up to `max` sessions, or None when all were read.
    fn next_chunk(&mut self, max: usize) -> Result<Option<Entries>>;
}

/// One subject's sessions in a snapshot, in sid order.
pub struct SubjectSnapshot {
    txn: ReadTransaction,
    generation: Generation,
    subject: String,
    after: Option<String>,
    done: bool,
}

impl Chunks for SubjectSnapshot {
    fn next_chunk(&mut self, max: usize) -> Result<Option<Entries>> {
        if self.done {
            return Ok(None);
        }
        let index = self
            .txn
            .open_table(self.generation.by_subject())
            .map_err(fail)?;
        let sessions = self
            .txn
            .open_table(self.generation.sessions())
            .map_err(fail)?;
        let subject = self.subject.as_str();
        let range = match &self.after {
            Some(sid) => index
                .range::<IndexKey>((Bound::Excluded((subject, sid.as_str())), Bound::Unbounded)),
            None => index.range::<IndexKey>((subject, "")..),
        }
        .map_err(fail)?;
        let mut out = Vec::with_capacity(max);
        let mut last = None;
        let mut seen = 0;
        for entry in range.take(max) {
            let (k, _) = entry.map_err(fail)?;
            let (s, sid) = k.value();
            if s != subject {
                break;
            }
            seen += 1;
            last = Some(sid.to_string());
            if let Some(v) = sessions.get(sid).map_err(fail)? {
                out.push((sid.to_string(), v.value().to_vec()));
            }
        }
        if seen < max {
            self.done = true;
        }
        self.after = last;
        if seen == 0 {
            return Ok(None);
        }
        Ok(Some(out))
    }
}

pub struct SessionSnapshot {
    txn: ReadTransaction,
    generation: Generation,
    after: Option<String>,
    done: bool,
}

impl Chunks for SessionSnapshot {
    fn next_chunk(&mut self, max: usize) -> Result<Option<Entries>> {
        if self.done {
            return Ok(None);
        }
        let table = self
            .txn
            .open_table(self.generation.sessions())
            .map_err(fail)?;
        let range = match &self.after {
            Some(k) => table.range::<&str>((Bound::Excluded(k.as_str()), Bound::Unbounded)),
            None => table.range::<&str>(..),
        }
        .map_err(fail)?;
        let mut out = Vec::with_capacity(max);
        for entry in range.take(max) {
            let (k, v) = entry.map_err(fail)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        if out.len() < max {
            self.done = true;
        }
        self.after = out.last().map(|(k, _)| k.clone());
        if out.is_empty() {
            return Ok(None);
        }
        Ok(Some(out))
    }
}
