//! Storage of the embedded state service on redb: a file (`fsync` on every commit that answers
//! a write, so an acknowledged write survives `kill -9`) or memory (`:memory:`).

use crate::config::Problem;
use redb::backends::InMemoryBackend;
use redb::{
    Database, Durability, MultimapTableDefinition, MultimapTableHandle, ReadTransaction,
    ReadableDatabase, ReadableMultimapTable, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableHandle,
};
use std::ops::Bound;
use std::sync::Arc;

mod sessions;
mod snapshot;

use super::store::{fail, BlockingChunks, Change, Commit, Entries, Registered, Result, StoreError};
use crate::config::StatePath;
pub use snapshot::{SessionSnapshot, SubjectSnapshot};

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

#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
}

impl RedbStore {
    pub fn open(path: &StatePath) -> std::result::Result<Self, Problem> {
        let mut builder = Database::builder();
        // The page cache would otherwise grow to 1 GiB while a large store is read.
        builder.set_cache_size(16 * 1024 * 1024);
        let db = match path {
            StatePath::Memory => builder
                .create_with_backend(InMemoryBackend::new())
                .map_err(|e| Problem::new("state", format!("in-memory store: {e}")))?,
            StatePath::File(file) => {
                if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        Problem::new(
                            "state.path",
                            format!("cannot create {}: {e}", dir.display()),
                        )
                    })?;
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
                        Err(e) => {
                            return Err(Problem::new(
                                "state.path",
                                format!("{}: {e}", file.display()),
                            ))
                        }
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
            .map_err(|e| Problem::new("state.path", format!("{e}")))?;
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
    ) -> Result<Registered> {
        self.write(Commit::Durable, |txn| {
            let mut clients = txn.open_table(CLIENTS).map_err(fail)?;
            if clients.get(id).map_err(fail)?.is_some() {
                return Ok(Registered::IdTaken);
            }
            if let Some((key, exp)) = ledger {
                let mut used = txn.open_table(USED).map_err(fail)?;
                if used.get(key).map_err(fail)?.is_some() {
                    return Ok(Registered::TokenUsed);
                }
                used.insert(key, exp).map_err(fail)?;
            }
            clients.insert(id, record).map_err(fail)?;
            Ok(Registered::Stored)
        })
    }

    /// Replaces client `id` if it is still `expected` (compare and swap): false when another
    /// write came first.
    pub fn replace_client(&self, id: &str, expected: &[u8], record: &[u8]) -> Result<bool> {
        self.write(Commit::Durable, |txn| {
            let mut clients = txn.open_table(CLIENTS).map_err(fail)?;
            let same = clients
                .get(id)
                .map_err(fail)?
                .is_some_and(|current| current.value() == expected);
            if same {
                clients.insert(id, record).map_err(fail)?;
            }
            Ok(same)
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
}
