//! The Redis engine of the state service (issue 12): several bindgate instances share one
//! registry, one session store and one record of used tokens; bindgate itself stays stateless.
//!
//! Keys, under `key_prefix` (P):
//! - `P gen`: the session generation; a delete-all is one `INCR` (O(1) whatever the store
//!   holds); the old generation's keys are removed in the background, its number kept in
//!   `P doomed` until they are gone (resumed at the next start after a crash).
//! - `P s:<gen>:<sid>`: a session record, expiring natively at the first of its
//!   `max_life` / `auth_life` / `max_idle` deadlines (`EXAT`).
//! - `P i:<gen>:<subject>`: the subject index, a set of sids. It is a hint: a reader checks each
//!   record's own subject, and stale members are removed when met. In a cluster the record and
//!   its index entry live in different slots, so they are written one after the other.
//! - `P c:<client_id>`: a client record.
//! - `P u:<key>`: the single-use ledger of initial access tokens, expiring with the token.
//! - `P d:<key>`: the shared DPoP replay cache.
//!
//! Everything acknowledged to a client was written to Redis (and, with `wait_replicas`,
//! to that many replicas: `WAIT`) before the answer. Listings and streamed deletes use `SCAN`
//! on every master, never one big reply.
//!
//! The store's methods block (they are called from `spawn_blocking`, like redb's); the
//! connections run on the store's own small runtime, so they outlive any one service's.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, Script, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

use super::store::{Change, Chunks, Commit, Entries, StoreError};
use crate::config::RedisSettings;

type Result<T> = std::result::Result<T, StoreError>;

fn fail(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(e.to_string())
}

/// How long one Redis command may take before the request gets a 503.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an acknowledged write waits for `wait_replicas` replicas before it is a 503.
const WAIT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Keys per `SCAN` / `SSCAN` step.
const SCAN_COUNT: usize = 512;

/// Compare-and-delete of a single-use ledger entry: only the request that took it gives it back.
const GIVE_BACK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Compare-and-set of one session record: written only if it is still exactly what was read,
/// so that nothing deleted or replaced in between is written back.
const CAS: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if cur ~= ARGV[1] then return 0 end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EXAT', ARGV[3])
end
return 1
"#;

/// A standalone server (reconnecting) or a cluster (connected on first use, retried).
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster {
        client: Arc<redis::cluster::ClusterClient>,
        conn: Arc<OnceCell<redis::cluster_async::ClusterConnection>>,
    },
}

struct Inner {
    link: Link,
    prefix: String,
    wait_replicas: u32,
    /// Taken at drop: a runtime cannot be dropped on an async thread, so it is shut down in
    /// the background instead.
    runtime: std::mem::ManuallyDrop<tokio::runtime::Runtime>,
    cas: Script,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: taken once, here, and never used again.
        let runtime = unsafe { std::mem::ManuallyDrop::take(&mut self.runtime) };
        runtime.shutdown_background();
    }
}

#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl RedisStore {
    pub fn open(settings: &RedisSettings) -> std::result::Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bindgate-redis")
            .enable_all()
            .build()
            .map_err(|e| format!("state.redis: runtime: {e}"))?;
        let password = settings.password.as_ref().map(|p| p.expose().to_string());
        let link = if settings.cluster.is_empty() {
            let mut info = settings
                .url
                .as_str()
                .into_connection_info()
                .map_err(|e| format!("state.redis.url: {e}"))?;
            if let Some(p) = &password {
                let redis = info.redis_settings().clone().set_password(p);
                info = info.set_redis_settings(redis);
            }
            let client = match &settings.ca {
                None => redis::Client::open(info).map_err(|e| format!("state.redis.url: {e}"))?,
                Some(ca) => {
                    let pem = std::fs::read(ca)
                        .map_err(|e| format!("state.redis.ca: {}: {e}", ca.display()))?;
                    redis::Client::build_with_tls(
                        info,
                        redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(pem),
                        },
                    )
                    .map_err(|e| format!("state.redis.ca: {e}"))?
                }
            };
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let _guard = runtime.enter();
            let manager = ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| format!("state.redis.url: {e}"))?;
            Link::Single(manager)
        } else {
            let mut builder = redis::cluster::ClusterClient::builder(settings.cluster.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(2);
            if let Some(p) = &password {
                builder = builder.password(p);
            }
            let client = builder
                .build()
                .map_err(|e| format!("state.redis.cluster: {e}"))?;
            Link::Cluster {
                client: Arc::new(client),
                conn: Arc::new(OnceCell::new()),
            }
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                link,
                prefix: settings.key_prefix.clone(),
                wait_replicas: settings.wait_replicas,
                runtime: std::mem::ManuallyDrop::new(runtime),
                cas: Script::new(CAS),
            }),
        };
        // Old generations a crash left half removed: resumed in the background.
        let me = store.clone();
        store.inner.runtime.spawn(async move {
            if let Ok(doomed) = me
                .query::<Vec<u64>>(redis::cmd("SMEMBERS").arg(me.key("doomed")))
                .await
            {
                for generation in doomed {
                    me.sweep_generation(generation).await;
                }
            }
        });
        Ok(store)
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.inner.prefix)
    }

    fn session_key(&self, generation: u64, sid: &str) -> String {
        format!("{}s:{generation}:{sid}", self.inner.prefix)
    }

    fn index_key(&self, generation: u64, subject: &str) -> String {
        format!("{}i:{generation}:{subject}", self.inner.prefix)
    }

    /// Runs `fut` on the store's runtime and waits for it (called from blocking threads, never
    /// from the store's own runtime).
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(fail("the Redis task ended without an answer")))
    }

    async fn link(&self) -> Result<LinkConn> {
        match &self.inner.link {
            Link::Single(m) => Ok(LinkConn::Single(m.clone())),
            Link::Cluster { client, conn } => {
                let c = conn
                    .get_or_try_init(|| async { client.get_async_connection().await })
                    .await
                    .map_err(fail)?;
                Ok(LinkConn::Cluster(c.clone()))
            }
        }
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let mut c = self.link().await?;
        cmd.query_async(&mut c).await.map_err(fail)
    }

    async fn pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        let mut c = self.link().await?;
        pipe.query_async(&mut c).await.map_err(fail)
    }

    /// Commands on keys of any slots, their replies in order: one pipeline on a server; on a
    /// cluster, sent together (each node gets its own on the multiplexed connections).
    async fn many<T: FromRedisValue>(&self, cmds: Vec<Cmd>) -> Result<Vec<T>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self.link().await? {
            LinkConn::Single(mut c) => {
                let mut p = redis::pipe();
                for cmd in cmds {
                    p.add_command(cmd);
                }
                p.query_async(&mut c).await.map_err(fail)
            }
            LinkConn::Cluster(c) => {
                let replies = futures_util::future::join_all(cmds.into_iter().map(|cmd| {
                    let mut c = c.clone();
                    async move { cmd.query_async::<T>(&mut c).await }
                }))
                .await;
                replies.into_iter().map(|r| r.map_err(fail)).collect()
            }
        }
    }

    /// After a write acknowledged to a client: `WAIT` for the configured replicas.
    async fn replicated(&self, commit: Commit) -> Result<()> {
        let n = self.inner.wait_replicas;
        if n == 0 || commit == Commit::Lazy {
            return Ok(());
        }
        // Redis' own wait ends before the client's response timeout would.
        let acked: u32 = self
            .query(
                redis::cmd("WAIT")
                    .arg(n)
                    .arg(WAIT_TIMEOUT.as_millis() as u64),
            )
            .await?;
        if acked < n {
            return Err(fail(format!(
                "WAIT: {acked} of {n} replicas acknowledged the write"
            )));
        }
        Ok(())
    }

    async fn generation(&self) -> Result<u64> {
        let g: Option<u64> = self.query(redis::cmd("GET").arg(self.key("gen"))).await?;
        Ok(g.unwrap_or(0))
    }

    /// The masters to `SCAN`: the server itself, or every master of the cluster.
    async fn masters(&self) -> Result<Vec<Option<(String, u16)>>> {
        match &self.inner.link {
            Link::Single(_) => Ok(vec![None]),
            Link::Cluster { .. } => {
                let nodes: String = self
                    .route(
                        redis::cmd("CLUSTER").arg("NODES").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                let mut out = Vec::new();
                for line in nodes.lines() {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if f.len() < 3
                        || !f[2].split(',').any(|x| x == "master")
                        || f[2].contains("fail")
                    {
                        continue;
                    }
                    let addr = f[1].split('@').next().unwrap_or("");
                    if let Some((host, port)) = addr.rsplit_once(':') {
                        if let Ok(port) = port.parse() {
                            out.push(Some((host.to_string(), port)));
                        }
                    }
                }
                if out.is_empty() {
                    return Err(fail("CLUSTER NODES lists no master"));
                }
                Ok(out)
            }
        }
    }

    async fn route<T: FromRedisValue>(&self, cmd: Cmd, routing: RoutingInfo) -> Result<T> {
        match self.link().await? {
            LinkConn::Single(mut c) => cmd.query_async(&mut c).await.map_err(fail),
            LinkConn::Cluster(mut c) => {
                let v = c.route_command(cmd, routing).await.map_err(fail)?;
                T::from_redis_value(v).map_err(fail)
            }
        }
    }

    /// One `SCAN` step on `node` (None: the standalone server).
    async fn scan_step(
        &self,
        node: &Option<(String, u16)>,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        match node {
            None => self.query(&cmd).await,
            Some((host, port)) => {
                self.route(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    }),
                )
                .await
            }
        }
    }

    /// Removes every key of session generation `g`, a `SCAN` step at a time, then forgets it.
    async fn sweep_generation(&self, g: u64) {
        let patterns = [
            format!("{}s:{g}:*", glob_escape(&self.inner.prefix)),
            format!("{}i:{g}:*", glob_escape(&self.inner.prefix)),
        ];
        let Ok(masters) = self.masters().await else {
            return;
        };
        for node in &masters {
            for pattern in &patterns {
                let mut cursor = 0;
                loop {
                    let Ok((next, keys)) = self.scan_step(node, cursor, pattern).await else {
                        return;
                    };
                    let unlink = keys.iter().map(|k| redis::cmd("UNLINK").arg(k).clone());
                    if self.many::<i64>(unlink.collect()).await.is_err() {
                        return;
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
        }
        let _ = self
            .query::<i64>(redis::cmd("SREM").arg(self.key("doomed")).arg(g))
            .await;
    }

    /// A 32-byte secret shared by every instance on this Redis under `name`: the first
    /// instance to ask creates it (`SET NX`), the others read it.
    pub fn shared_secret(&self, name: &str) -> Result<Vec<u8>> {
        let me = self.clone();
        let key = self.key(&format!("secret:{name}"));
        let mut fresh = [0u8; 32];
        openssl::rand::rand_bytes(&mut fresh).map_err(fail)?;
        self.block(async move {
            let _: Option<String> = me
                .query(redis::cmd("SET").arg(&key).arg(fresh.as_slice()).arg("NX"))
                .await?;
            let secret: Option<Vec<u8>> = me.query(redis::cmd("GET").arg(&key)).await?;
            me.replicated(Commit::Durable).await?;
            secret
                .filter(|s| s.len() == 32)
                .ok_or_else(|| fail(format!("{key} does not hold a 32-byte secret")))
        })
    }

    // Health

    /// `maxmemory_policy` as `INFO memory` reports it (works where `CONFIG` is renamed away).
    /// On a cluster, the first master's, which the others are expected to share.
    pub fn eviction_policy(&self) -> Result<Option<String>> {
        let me = self.clone();
        self.block(async move {
            let info: String = me.query(redis::cmd("INFO").arg("memory")).await?;
            Ok(info.lines().find_map(|l| {
                l.strip_prefix("maxmemory_policy:")
                    .map(|p| p.trim().to_string())
            }))
        })
    }

    pub fn ping(&self) -> Result<()> {
        let me = self.clone();
        self.block(async move {
            let pong: String = me.query(&redis::cmd("PING")).await?;
            if pong == "PONG" {
                Ok(())
            } else {
                Err(fail(format!("PING answered {pong}")))
            }
        })
    }

    // Clients

    pub fn put_client(&self, id: &str, record: &[u8]) -> Result<()> {
        let (me, key, record) = (self.clone(), self.key(&format!("c:{id}")), record.to_vec());
        self.block(async move {
            me.query::<()>(redis::cmd("SET").arg(&key).arg(record))
                .await?;
            me.replicated(Commit::Durable).await
        })
    }

    /// Stores a new client unless `ledger` (key, expiry in seconds since the epoch) was used
    /// already: false then, and nothing is stored. The ledger entry is taken first with
    /// `SET NX` (of two concurrent uses exactly one gets it) and given back if storing the
    /// client fails, so a failed registration does not use the token up.
    pub fn register_client(
        &self,
        ledger: Option<&super::Ledger>,
        id: &str,
        record: &[u8],
    ) -> Result<bool> {
        let (me, key, record) = (self.clone(), self.key(&format!("c:{id}")), record.to_vec());
        let ledger = ledger.cloned();
        self.block(async move {
            if let Some(l) = &ledger {
                if !me.take(l).await? {
                    return Ok(false);
                }
            }
            let stored = async {
                me.query::<()>(redis::cmd("SET").arg(&key).arg(record))
                    .await?;
                me.replicated(Commit::Durable).await
            }
            .await;
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
            Ok(true)
        })
    }

    /// Takes the ledger entry of `l` with this request's holder value (`SET NX EXAT`): whether
    /// it was free. On an error (a timeout: the `SET` may still run) it is given back.
    async fn take(&self, l: &super::Ledger) -> Result<bool> {
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
    async fn give_back(&self, l: &super::Ledger) {
        let used = self.key(&format!("u:{}", l.key));
        let script = Script::new(GIVE_BACK);
        let mut invocation = script.key(&used);
        invocation.arg(&l.holder);
        let done: Result<i64> = match self.link().await {
            Ok(mut c) => invocation.invoke_async(&mut c).await.map_err(fail),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            tracing::warn!(target: "bindgate::state", "a single-use token could not be given back: {e}");
        }
    }

    /// [`RedisStore::take`], blocking.
    pub fn take_token(&self, l: &super::Ledger) -> Result<bool> {
        let (me, l) = (self.clone(), l.clone());
        self.block(async move { me.take(&l).await })
    }

    /// [`RedisStore::give_back`], blocking.
    pub fn give_back_token(&self, l: &super::Ledger) -> Result<()> {
        let (me, l) = (self.clone(), l.clone());
        self.block(async move {
            me.give_back(&l).await;
            Ok(())
        })
    }

    pub fn get_client(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let (me, key) = (self.clone(), self.key(&format!("c:{id}")));
        self.block(async move { me.query(redis::cmd("GET").arg(&key)).await })
    }

    pub fn delete_client(&self, id: &str) -> Result<bool> {
        let (me, key) = (self.clone(), self.key(&format!("c:{id}")));
        self.block(async move {
            let n: i64 = me.query(redis::cmd("DEL").arg(&key)).await?;
            me.replicated(Commit::Durable).await?;
            Ok(n > 0)
        })
    }

    /// Every client record, read with `SCAN` on every master.
    pub fn clients(&self) -> Result<Vec<Vec<u8>>> {
        let me = self.clone();
        self.block(async move {
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
    }

    // Sessions

    pub fn put_session(
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
        self.block(async move {
            let g = me.generation().await?;
            me.write_session(g, &sid, &subject, record, expires).await?;
            me.replicated(commit).await
        })
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
    pub fn update_session<E: From<StoreError> + Send + 'static>(
        &self,
        sid: &str,
        commit: Commit,
        expires_of: fn(&[u8]) -> Option<i64>,
        mut f: impl FnMut(&[u8]) -> std::result::Result<Change, E>,
    ) -> std::result::Result<bool, E> {
        for _ in 0..16 {
            let me = self.clone();
            let sid_owned = sid.to_string();
            let (g, current) = self.block(async move {
                let g = me.generation().await?;
                let v: Option<Vec<u8>> = me
                    .query(redis::cmd("GET").arg(me.session_key(g, &sid_owned)))
                    .await?;
                Ok((g, v))
            })?;
            let Some(current) = current else {
                return Ok(false);
            };
            let (old_subject, subject, record) = match f(&current)? {
                Change::Keep => return Ok(true),
                Change::Write {
                    old_subject,
                    subject,
                    record,
                } => (old_subject, subject, record),
            };
            let me = self.clone();
            let sid_owned = sid.to_string();
            let expires = expires_of(&record);
            let done = self.block(async move {
                let key = me.session_key(g, &sid_owned);
                let mut c = me.link().await?;
                let r: i64 = me
                    .inner
                    .cas
                    .key(&key)
                    .arg(current)
                    .arg(record)
                    .arg(expires.map(|e| e.max(1)).unwrap_or(0))
                    .invoke_async(&mut c)
                    .await
                    .map_err(fail)?;
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
            })?;
            match done {
                1 => return Ok(true),
                -1 => return Ok(false),
                _ => continue,
            }
        }
        Err(fail("the session kept changing while it was being updated").into())
    }

    pub fn get_session(&self, sid: &str) -> Result<Option<Vec<u8>>> {
        let (me, sid) = (self.clone(), sid.to_string());
        self.block(async move {
            let g = me.generation().await?;
            me.query(redis::cmd("GET").arg(me.session_key(g, &sid)))
                .await
        })
    }

    pub fn delete_session(
        &self,
        sid: &str,
        subject_of: fn(&[u8]) -> Option<String>,
    ) -> Result<Option<Vec<u8>>> {
        let (me, sid) = (self.clone(), sid.to_string());
        self.block(async move {
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
    }

    /// One subject's sessions, read (or, with `delete`, taken: `GETDEL`) a chunk at a time.
    pub fn subject_cursor(
        &self,
        subject: &str,
        delete: bool,
        subject_of: fn(&[u8]) -> Option<String>,
    ) -> Result<SubjectCursor> {
        let me = self.clone();
        let g = self.block(async move { me.generation().await })?;
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
    pub fn delete_subject(
        &self,
        subject: &str,
        keep: bool,
        subject_of: fn(&[u8]) -> Option<String>,
    ) -> Result<Option<SubjectCursor>> {
        let mut cursor = self.subject_cursor(subject, true, subject_of)?;
        if keep {
            return Ok(Some(cursor));
        }
        while cursor.next_chunk(SCAN_COUNT)?.is_some() {}
        let me = self.clone();
        self.block(async move { me.replicated(Commit::Durable).await })?;
        Ok(None)
    }

    /// Removes every session at once: `INCR` of the generation (O(1)). With `keep`, the old
    /// generation is streamed from a `SCAN` on every master, each session taken with `GETDEL`;
    /// otherwise its keys are removed in the background.
    pub fn delete_all_sessions(&self, keep: bool) -> Result<Option<GenerationCursor>> {
        let me = self.clone();
        let old = self.block(async move {
            let mut p = redis::pipe();
            p.cmd("INCR").arg(me.key("gen"));
            let (new,): (u64,) = me.pipe(&p).await?;
            let old = new - 1;
            me.query::<i64>(redis::cmd("SADD").arg(me.key("doomed")).arg(old))
                .await?;
            me.replicated(Commit::Durable).await?;
            Ok(old)
        })?;
        if keep {
            let me = self.clone();
            let masters = self.block(async move { me.masters().await })?;
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

    /// Records `key` as seen for `ttl` (DPoP `jti`s): true the first time, false when some
    /// instance recorded it within its window.
    pub async fn first_use(&self, key: &str, ttl: Duration) -> Result<bool> {
        let me = self.clone();
        let key = self.key(&format!("d:{key}"));
        let task = self.inner.runtime.spawn(async move {
            let set: Option<String> = me
                .query(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(1)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl.as_millis().max(1) as u64),
                )
                .await?;
            Ok(set.is_some())
        });
        task.await.map_err(fail)?
    }
}

/// A connection of either kind, for one command.
enum LinkConn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// The record every instance shares, as the authoriser uses it (DPoP proofs, the nonce key).
#[async_trait::async_trait]
impl crate::auth::SharedRecord for RedisStore {
    async fn first_use(
        &self,
        key: &str,
        ttl: Duration,
    ) -> std::result::Result<bool, crate::auth::SharedError> {
        RedisStore::first_use(self, key, ttl)
            .await
            .map_err(|e| crate::auth::SharedError(e.to_string()))
    }

    fn shared_secret(&self, name: &str) -> std::result::Result<Vec<u8>, crate::auth::SharedError> {
        RedisStore::shared_secret(self, name).map_err(|e| crate::auth::SharedError(e.to_string()))
    }
}

impl ConnectionLike for LinkConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            LinkConn::Single(c) => c.req_packed_command(cmd),
            LinkConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            LinkConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            LinkConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            LinkConn::Single(c) => c.get_db(),
            LinkConn::Cluster(c) => c.get_db(),
        }
    }
}

/// `*`, `?`, `[`, `]` and `\` of a key prefix, escaped for a `SCAN MATCH` pattern.
fn glob_escape(s: &str) -> String {
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
    store: RedisStore,
    generation: u64,
    subject: String,
    cursor: u64,
    done: bool,
    delete: bool,
    subject_of: fn(&[u8]) -> Option<String>,
}

impl Chunks for SubjectCursor {
    fn next_chunk(&mut self, max: usize) -> Result<Option<Entries>> {
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
        let (next, entries) = self.store.block(async move {
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
        })?;
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
    store: RedisStore,
    generation: u64,
    masters: Vec<Option<(String, u16)>>,
    node: usize,
    cursor: u64,
    done: bool,
}

impl Chunks for GenerationCursor {
    fn next_chunk(&mut self, _max: usize) -> Result<Option<Entries>> {
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
            let (next, entries) = self.store.block(async move {
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
            })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_patterns_escape_the_prefix() {
        assert_eq!(glob_escape("bindgate:"), "bindgate:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
