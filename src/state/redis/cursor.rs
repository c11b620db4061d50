//! Sessions read a step at a time (`SSCAN` of a subject's index, `SCAN` of a generation):
//! memory stays flat whatever Redis holds.

use super::super::store::{Chunks, Entries, Result};
use super::*;

/// `*`, `?`, `[`, `]` and `\` of a key prefix, escaped for a `SCAN MATCH` pattern.
pub(super) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One subject's sessions, `SSCAN` of its index a step at a time; members whose record is
/// gone or belongs to another subject (a stale hint) are dropped from the index.
pub struct SubjectCursor {
    pub(super) store: RedisStore,
    pub(super) generation: u64,
    pub(super) subject: String,
    pub(super) cursor: u64,
    pub(super) done: bool,
    pub(super) delete: bool,
    pub(super) subject_of: fn(&[u8]) -> Option<String>,
}

#[async_trait::async_trait]
impl Chunks for SubjectCursor {
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Entries>> {
        if self.done {
            return Ok(None);
        }
        let me = self.store.clone();
        let (g, subject, cursor, delete, subject_of) = (
            self.generation,
            self.subject.clone(),
            self.cursor,
            self.delete,
            self.subject_of,
        );
        let (next, entries) = self
            .store
            .run(async move {
                let index = me.index_key(g, &subject);
                let (next, sids): (u64, Vec<String>) = me
                    .query(
                        redis::cmd("SSCAN")
                            .arg(&index)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(max.max(1)),
                    )
                    .await?;
                let mut entries = Vec::with_capacity(sids.len());
                if !sids.is_empty() {
                    let reads = sids.iter().map(|sid| {
                        redis::cmd(if delete { "GETDEL" } else { "GET" })
                            .arg(me.session_key(g, sid))
                            .clone()
                    });
                    let values: Vec<Option<Vec<u8>>> = me.many(reads.collect()).await?;
                    let mut stale: Vec<Cmd> = Vec::new();
                    for (sid, v) in sids.into_iter().zip(values) {
                        match v {
                            Some(v) if subject_of(&v).as_deref() == Some(subject.as_str()) => {
                                if delete {
                                    stale.push(redis::cmd("SREM").arg(&index).arg(&sid).clone());
                                }
                                entries.push((sid, v));
                            }
                            Some(v) => {
                                // Moved to another subject meanwhile: put back what GETDEL took.
                                if delete {
                                    stale.push(
                                        redis::cmd("SET")
                                            .arg(me.session_key(g, &sid))
                                            .arg(v)
                                            .arg("KEEPTTL")
                                            .clone(),
                                    );
                                }
                                stale.push(redis::cmd("SREM").arg(&index).arg(&sid).clone());
                            }
                            None => {
                                stale.push(redis::cmd("SREM").arg(&index).arg(&sid).clone());
                            }
                        }
                    }
                    me.many::<Value>(stale).await?;
                }
                Ok((next, entries))
            })
            .await?;
        self.cursor = next;
        if next == 0 {
            self.done = true;
        }
        if entries.is_empty() && self.done {
            return Ok(None);
        }
        Ok(Some(entries))
    }
}

/// The sessions of a generation switched away from by a delete-all, taken (`GETDEL`) from a
/// `SCAN` on every master, a step at a time; the generation is forgotten at the end.
pub struct GenerationCursor {
    pub(super) store: RedisStore,
    pub(super) generation: u64,
    pub(super) masters: Vec<Option<(String, u16)>>,
    pub(super) node: usize,
    pub(super) cursor: u64,
    pub(super) done: bool,
}

#[async_trait::async_trait]
impl Chunks for GenerationCursor {
    async fn next_chunk(&mut self, _max: usize) -> Result<Option<Entries>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let Some(node) = self.masters.get(self.node).cloned() else {
                self.done = true;
                let me = self.store.clone();
                let g = self.generation;
                // The index sets of the old generation go in the background.
                self.store
                    .inner
                    .runtime
                    .spawn(async move { me.sweep_generation(g).await });
                return Ok(None);
            };
            let me = self.store.clone();
            let (g, cursor) = (self.generation, self.cursor);
            let (next, entries) = self
                .store
                .run(async move {
                    let pattern = format!("{}s:{g}:*", glob_escape(&me.inner.prefix));
                    let (next, keys) = me.scan_step(&node, cursor, &pattern).await?;
                    let mut entries = Vec::with_capacity(keys.len());
                    if !keys.is_empty() {
                        let takes = keys.iter().map(|k| redis::cmd("GETDEL").arg(k).clone());
                        let values: Vec<Option<Vec<u8>>> = me.many(takes.collect()).await?;
                        let head = format!("{}s:{g}:", me.inner.prefix);
                        for (k, v) in keys.into_iter().zip(values) {
                            let (Some(v), Ok(k)) = (v, String::from_utf8(k)) else {
                                continue;
                            };
                            if let Some(sid) = k.strip_prefix(&head) {
                                entries.push((sid.to_string(), v));
                            }
                        }
                    }
                    Ok((next, entries))
                })
                .await?;
            if next == 0 {
                self.node += 1;
                self.cursor = 0;
            } else {
                self.cursor = next;
            }
            if !entries.is_empty() {
                return Ok(Some(entries));
            }
        }
    }
}
