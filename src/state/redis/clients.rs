//! The client registry and the single-use ledger on Redis.

use super::*;

impl RedisStore {
    pub async fn put_client(&self, id: &str, record: &[u8]) -> Result<()> {
        let (me, key, record) = (self.clone(), self.key(&format!("c:{id}")), record.to_vec());
        self.run(async move {
            me.query::<()>(redis::cmd("SET").arg(&key).arg(record))
                .await?;
            me.replicated(Commit::Durable).await
        })
        .await
    }

    /// Stores a new client unless `ledger` (key, expiry in seconds since the epoch) was used
    /// already: false then, and nothing is stored. The ledger entry is taken first with
    /// `SET NX` (of two concurrent uses exactly one gets it) and given back if storing the
    /// client fails, so a failed registration does not use the token up.
    pub async fn register_client(
        &self,
        ledger: Option<&crate::auth::Ledger>,
        id: &str,
        record: &[u8],
    ) -> Result<Registered> {
        let (me, key, record) = (self.clone(), self.key(&format!("c:{id}")), record.to_vec());
        let ledger = ledger.cloned();
        self.run(async move {
            if let Some(l) = &ledger {
                if !me.take(l).await? {
                    return Ok(Registered::TokenUsed);
                }
            }
            // `NX`: a client id in use (a preferred_client_id) is never overwritten.
            let stored = async {
                let set: Option<String> = me
                    .query(redis::cmd("SET").arg(&key).arg(record).arg("NX"))
                    .await?;
                if set.is_none() {
                    return Ok(false);
                }
                me.replicated(Commit::Durable).await.map(|()| true)
            }
            .await;
            if let Ok(false) = stored {
                if let Some(l) = &ledger {
                    me.give_back(l).await;
                }
                return Ok(Registered::IdTaken);
            }
            if let Err(e) = stored {
                // Nothing left behind: not the client (a WAIT that failed after the SET), not
                // the token. Both are sent after the SET on the same connection, so they run
                // after it even when it timed out here.
                if let Err(d) = me.query::<i64>(redis::cmd("DEL").arg(&key)).await {
                    tracing::warn!(target: "bindgate::state", "a failed registration's client record could not be removed: {d}");
                }
                if let Some(l) = &ledger {
                    me.give_back(l).await;
                }
                return Err(e);
            }
            Ok(Registered::Stored)
        }).await
    }

    /// Replaces client `id` if it still holds `expected` (compare and swap, one script):
    /// false when another write came first.
    pub async fn replace_client(&self, id: &str, expected: &[u8], record: &[u8]) -> Result<bool> {
        let (me, key) = (self.clone(), self.key(&format!("c:{id}")));
        let (expected, record) = (expected.to_vec(), record.to_vec());
        self.run(async move {
            let mut c = me.link().await?;
            let mut invocation = me.inner.cas.key(&key);
            invocation.arg(expected).arg(record).arg(0);
            let r: i64 = me
                .timed(async { invocation.invoke_async(&mut c).await.map_err(fail) })
                .await?;
            if r == 1 {
                me.replicated(Commit::Durable).await?;
            }
            Ok(r == 1)
        })
        .await
    }

    /// Takes the ledger entry of `l` with this request's holder value (`SET NX EXAT`): whether
    /// it was free. On an error (a timeout: the `SET` may still run) it is given back.
    async fn take(&self, l: &crate::auth::Ledger) -> Result<bool> {
        let used = self.key(&format!("u:{}", l.key));
        let taken: Result<Option<String>> = self
            .query(
                redis::cmd("SET")
                    .arg(&used)
                    .arg(&l.holder)
                    .arg("NX")
                    .arg("EXAT")
                    .arg(l.expires.max(1)),
            )
            .await;
        match taken {
            Ok(t) => Ok(t.is_some()),
            Err(e) => {
                self.give_back(l).await;
                Err(e)
            }
        }
    }

    /// Deletes the ledger entry of `l` if this request's holder value is still what it holds
    /// (compare-and-delete: never another request's).
    async fn give_back(&self, l: &crate::auth::Ledger) {
        let used = self.key(&format!("u:{}", l.key));
        let script = Script::new(GIVE_BACK);
        let mut invocation = script.key(&used);
        invocation.arg(&l.holder);
        let done: Result<i64> = match self.link().await {
            Ok(mut c) => {
                self.timed(async { invocation.invoke_async(&mut c).await.map_err(fail) })
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            tracing::warn!(target: "bindgate::state", "a single-use token could not be given back: {e}");
        }
    }

    /// [`RedisStore::take`], blocking.
    pub async fn take_token(&self, l: &crate::auth::Ledger) -> Result<bool> {
        let (me, l) = (self.clone(), l.clone());
        self.run(async move { me.take(&l).await }).await
    }

    /// [`RedisStore::give_back`], blocking.
    pub async fn give_back_token(&self, l: &crate::auth::Ledger) -> Result<()> {
        let (me, l) = (self.clone(), l.clone());
        self.run(async move {
            me.give_back(&l).await;
            Ok(())
        })
        .await
    }

    pub async fn get_client(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let (me, key) = (self.clone(), self.key(&format!("c:{id}")));
        self.run(async move { me.query(redis::cmd("GET").arg(&key)).await })
            .await
    }

    pub async fn delete_client(&self, id: &str) -> Result<bool> {
        let (me, key) = (self.clone(), self.key(&format!("c:{id}")));
        self.run(async move {
            let n: i64 = me.query(redis::cmd("DEL").arg(&key)).await?;
            me.replicated(Commit::Durable).await?;
            Ok(n > 0)
        })
        .await
    }

    /// Every client record, read with `SCAN` on every master.
    pub async fn clients(&self) -> Result<Vec<Vec<u8>>> {
        let me = self.clone();
        self.run(async move {
            let pattern = format!("{}c:*", glob_escape(&me.inner.prefix));
            let mut out = Vec::new();
            for node in me.masters().await? {
                let mut cursor = 0;
                loop {
                    let (next, keys) = me.scan_step(&node, cursor, &pattern).await?;
                    let gets = keys.iter().map(|k| redis::cmd("GET").arg(k).clone());
                    let values: Vec<Option<Vec<u8>>> = me.many(gets.collect()).await?;
                    out.extend(values.into_iter().flatten());
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Ok(out)
        })
        .await
    }

    // Sessions
}
