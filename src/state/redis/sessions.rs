//! Sessions on Redis: records under a generation, a subject index per generation, updates by
//! compare-and-set.

use super::*;

impl RedisStore {
    pub async fn put_session(
        &self,
        sid: &str,
        subject: &str,
        record: &[u8],
        expires: Option<i64>,
        commit: Commit,
    ) -> Result<()> {
        let (me, sid, subject, record) = (
            self.clone(),
            sid.to_string(),
            subject.to_string(),
            record.to_vec(),
        );
        self.run(async move {
            let g = me.generation().await?;
            me.write_session(g, &sid, &subject, record, expires).await?;
            me.replicated(commit).await
        })
        .await
    }

    async fn write_session(
        &self,
        g: u64,
        sid: &str,
        subject: &str,
        record: Vec<u8>,
        expires: Option<i64>,
    ) -> Result<()> {
        let mut set = redis::cmd("SET");
        set.arg(self.session_key(g, sid)).arg(record);
        if let Some(at) = expires {
            set.arg("EXAT").arg(at.max(1));
        }
        self.query::<()>(&set).await?;
        self.index_add(g, subject, sid, expires).await
    }

    async fn index_add(
        &self,
        g: u64,
        subject: &str,
        sid: &str,
        expires: Option<i64>,
    ) -> Result<()> {
        let index = self.index_key(g, subject);
        let mut p = redis::pipe();
        p.cmd("SADD").arg(&index).arg(sid).ignore();
        match expires {
            // The set lives as long as its longest-lived member: NX gives a new set its
            // expiry, GT only lengthens it.
            Some(at) => {
                p.cmd("EXPIREAT")
                    .arg(&index)
                    .arg(at.max(1))
                    .arg("NX")
                    .ignore();
                p.cmd("EXPIREAT")
                    .arg(&index)
                    .arg(at.max(1))
                    .arg("GT")
                    .ignore();
            }
            None => {
                p.cmd("PERSIST").arg(&index).ignore();
            }
        }
        self.pipe::<()>(&p).await
    }

    /// Read-modify-write of one session: `f` sees the current record and says what to store;
    /// the write is a compare-and-set, retried with the new record if another write came in
    /// between. False when the session does not exist (then `f` is not called).
    pub async fn update_session<T, E: From<StoreError>>(
        &self,
        sid: &str,
        commit: Commit,
        expires_of: fn(&[u8]) -> Option<i64>,
        mut f: impl FnMut(&[u8]) -> std::result::Result<(Change, T), E> + Send,
    ) -> std::result::Result<Option<T>, E> {
        for _ in 0..16 {
            let me = self.clone();
            let sid_owned = sid.to_string();
            let (g, current) = self
                .run(async move {
                    let g = me.generation().await?;
                    let v: Option<Vec<u8>> = me
                        .query(redis::cmd("GET").arg(me.session_key(g, &sid_owned)))
                        .await?;
                    Ok((g, v))
                })
                .await?;
            let Some(current) = current else {
                return Ok(None);
            };
            let (change, out) = f(&current)?;
            let (old_subject, subject, record) = match change {
                Change::Keep => return Ok(Some(out)),
                Change::Write {
                    old_subject,
                    subject,
                    record,
                } => (old_subject, subject, record),
            };
            let me = self.clone();
            let sid_owned = sid.to_string();
            let expires = expires_of(&record);
            let done = self
                .run(async move {
                    let key = me.session_key(g, &sid_owned);
                    let mut c = me.link().await?;
                    let mut invocation = me.inner.cas.key(&key);
                    invocation
                        .arg(current)
                        .arg(record)
                        .arg(expires.map(|e| e.max(1)).unwrap_or(0));
                    let r: i64 = me
                        .timed(async { invocation.invoke_async(&mut c).await.map_err(fail) })
                        .await?;
                    if r == 1 {
                        if old_subject != subject {
                            let _ = me
                                .query::<i64>(
                                    redis::cmd("SREM")
                                        .arg(me.index_key(g, &old_subject))
                                        .arg(&sid_owned),
                                )
                                .await;
                            me.index_add(g, &subject, &sid_owned, expires).await?;
                        } else {
                            // Same subject: the index only has to live as long as the session.
                            let index = me.index_key(g, &subject);
                            let mut touch = redis::cmd(if expires.is_some() {
                                "EXPIREAT"
                            } else {
                                "PERSIST"
                            });
                            touch.arg(&index);
                            if let Some(at) = expires {
                                touch.arg(at.max(1)).arg("GT");
                            }
                            me.query::<i64>(&touch).await?;
                        }
                        me.replicated(commit).await?;
                    }
                    Ok(r)
                })
                .await?;
            match done {
                1 => return Ok(Some(out)),
                -1 => return Ok(None),
                _ => continue,
            }
        }
        Err(fail("the session kept changing while it was being updated").into())
    }

    pub async fn get_session(&self, sid: &str) -> Result<Option<Vec<u8>>> {
        let (me, sid) = (self.clone(), sid.to_string());
        self.run(async move {
            let g = me.generation().await?;
            me.query(redis::cmd("GET").arg(me.session_key(g, &sid)))
                .await
        })
        .await
    }

    pub async fn delete_session(
        &self,
        sid: &str,
        subject_of: fn(&[u8]) -> Option<String>,
    ) -> Result<Option<Vec<u8>>> {
        let (me, sid) = (self.clone(), sid.to_string());
        self.run(async move {
            let g = me.generation().await?;
            let removed: Option<Vec<u8>> = me
                .query(redis::cmd("GETDEL").arg(me.session_key(g, &sid)))
                .await?;
            if let Some(subject) = removed.as_deref().and_then(subject_of) {
                let _ = me
                    .query::<i64>(redis::cmd("SREM").arg(me.index_key(g, &subject)).arg(&sid))
                    .await;
            }
            me.replicated(Commit::Durable).await?;
            Ok(removed)
        })
        .await
    }

    /// One subject's sessions, read (or, with `delete`, taken: `GETDEL`) a chunk at a time.
    pub async fn subject_cursor(
        &self,
        subject: &str,
        delete: bool,
        subject_of: fn(&[u8]) -> Option<String>,
    ) -> Result<SubjectCursor> {
        let me = self.clone();
        let g = self.run(async move { me.generation().await }).await?;
        Ok(SubjectCursor {
            store: self.clone(),
            generation: g,
            subject: subject.to_string(),
            cursor: 0,
            done: false,
            delete,
            subject_of,
        })
    }

    /// Removes every session of `subject`; with `keep`, the removed ones are returned a chunk
    /// at a time as they are taken (`GETDEL`), otherwise all are removed before this returns.
    pub async fn delete_subject(
        &self,
        subject: &str,
        keep: bool,
        subject_of: fn(&[u8]) -> Option<String>,
    ) -> Result<Option<SubjectCursor>> {
        let mut cursor = self.subject_cursor(subject, true, subject_of).await?;
        if keep {
            return Ok(Some(cursor));
        }
        while cursor.next_chunk(SCAN_COUNT).await?.is_some() {}
        let me = self.clone();
        self.run(async move { me.replicated(Commit::Durable).await })
            .await?;
        Ok(None)
    }

    /// Removes every session at once: `INCR` of the generation (O(1)). With `keep`, the old
    /// generation is streamed from a `SCAN` on every master, each session taken with `GETDEL`;
    /// otherwise its keys are removed in the background.
    pub async fn delete_all_sessions(&self, keep: bool) -> Result<Option<GenerationCursor>> {
        let me = self.clone();
        let old = self
            .run(async move {
                let mut p = redis::pipe();
                p.cmd("INCR").arg(me.key("gen"));
                let (new,): (u64,) = me.pipe(&p).await?;
                let old = new - 1;
                me.query::<i64>(redis::cmd("SADD").arg(me.key("doomed")).arg(old))
                    .await?;
                me.replicated(Commit::Durable).await?;
                Ok(old)
            })
            .await?;
        if keep {
            let me = self.clone();
            let masters = self.run(async move { me.masters().await }).await?;
            return Ok(Some(GenerationCursor {
                store: self.clone(),
                generation: old,
                masters,
                node: 0,
                cursor: 0,
                done: false,
            }));
        }
        let me = self.clone();
        self.inner
            .runtime
            .spawn(async move { me.sweep_generation(old).await });
        Ok(None)
    }

    /// The number of sessions of the current generation (a `SCAN` count: for tests and
    /// benchmarks, not the request path).
    pub fn session_count(&self) -> Result<u64> {
        let me = self.clone();
        self.block(async move {
            let g = me.generation().await?;
            let pattern = format!("{}s:{g}:*", glob_escape(&me.inner.prefix));
            let mut n = 0u64;
            for node in me.masters().await? {
                let mut cursor = 0;
                loop {
                    let (next, keys) = me.scan_step(&node, cursor, &pattern).await?;
                    n += keys.len() as u64;
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Ok(n)
        })
    }

    /// Inserts many sessions, pipelined (benchmarks and imports).
    pub fn insert_sessions(
        &self,
        items: impl Iterator<Item = (String, String, Vec<u8>)>,
        expires_of: fn(&[u8]) -> Option<i64>,
    ) -> Result<()> {
        let me = self.clone();
        let g = self.block(async move { me.generation().await })?;
        let mut batch = Vec::with_capacity(1000);
        let mut items = items.peekable();
        while items.peek().is_some() {
            batch.clear();
            batch.extend(items.by_ref().take(1000));
            let mut cmds = Vec::with_capacity(batch.len() * 2);
            for (sid, subject, record) in &batch {
                let mut set = redis::cmd("SET");
                set.arg(self.session_key(g, sid)).arg(record);
                if let Some(at) = expires_of(record) {
                    set.arg("EXAT").arg(at.max(1));
                }
                cmds.push(set);
                cmds.push(
                    redis::cmd("SADD")
                        .arg(self.index_key(g, subject))
                        .arg(sid)
                        .clone(),
                );
            }
            let me = self.clone();
            self.block(async move { me.many::<Value>(cmds).await })?;
        }
        Ok(())
    }
}
