//! Sessions on redb: records, the subject index and its generations, in one transaction each.

use super::*;

impl RedbStore {
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
    pub fn update_session<T, E: From<StoreError>>(
        &self,
        sid: &str,
        commit: Commit,
        f: impl FnOnce(&[u8]) -> std::result::Result<(Change, T), E>,
    ) -> std::result::Result<Option<T>, E> {
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
        let (old_subject, subject, record, out) = match change {
            None => {
                txn.abort().map_err(fail)?;
                return Ok(None);
            }
            Some(Err(e)) => {
                txn.abort().map_err(fail)?;
                return Err(e);
            }
            Some(Ok((Change::Keep, out))) => {
                txn.abort().map_err(fail)?;
                return Ok(Some(out));
            }
            Some(Ok((
                Change::Write {
                    old_subject,
                    subject,
                    record,
                },
                out,
            ))) => (old_subject, subject, record, out),
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
        Ok(Some(out))
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
