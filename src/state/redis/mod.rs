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

use crate::config::Problem;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, Script, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

mod clients;
mod cursor;
mod link;
mod sessions;

use super::store::{Change, Chunks, Commit, Registered, StoreError};
use crate::config::RedisSettings;
use cursor::glob_escape;
pub use cursor::{GenerationCursor, SubjectCursor};
use link::{Link, LinkConn};

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

struct Inner {
    link: Link,
    prefix: String,
    wait_replicas: u32,
    /// Where the connections and commands run.
    runtime: tokio::runtime::Handle,
    /// Owns that runtime: shut down in the background when the store goes (a runtime cannot
    /// be dropped on an async thread).
    _owner: RuntimeOwner,
    cas: Script,
    /// Times every command (`bindgate_redis_command_duration_seconds`), once set.
    timer: std::sync::OnceLock<prometheus::Histogram>,
}

/// A runtime shut down in the background when dropped, wherever that happens.
struct RuntimeOwner(Option<tokio::runtime::Runtime>);

impl Drop for RuntimeOwner {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl RedisStore {
    pub fn open(settings: &RedisSettings) -> std::result::Result<Self, Problem> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bindgate-redis")
            .enable_all()
            .build()
            .map_err(|e| Problem::new("state.redis", format!("runtime: {e}")))?;
        let password = settings.password.as_ref().map(|p| p.expose().to_string());
        let link = if settings.cluster.is_empty() {
            let mut info = settings
                .url
                .as_str()
                .into_connection_info()
                .map_err(|e| Problem::new("state.redis.url", format!("{e}")))?;
            if let Some(p) = &password {
                let redis = info.redis_settings().clone().set_password(p);
                info = info.set_redis_settings(redis);
            }
            let client = match &settings.ca {
                None => redis::Client::open(info)
                    .map_err(|e| Problem::new("state.redis.url", format!("{e}")))?,
                Some(ca) => redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.pem().to_vec()),
                    },
                )
                .map_err(|e| Problem::new("state.redis.ca", format!("{e}")))?,
            };
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let _guard = runtime.enter();
            let manager = ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| Problem::new("state.redis.url", format!("{e}")))?;
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
                .map_err(|e| Problem::new("state.redis.cluster", format!("{e}")))?;
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
                runtime: runtime.handle().clone(),
                _owner: RuntimeOwner(Some(runtime)),
                cas: Script::new(CAS),
                timer: std::sync::OnceLock::new(),
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

    /// From now on every command's duration is observed in `timer`.
    pub fn time_commands(&self, timer: prometheus::Histogram) {
        let _ = self.inner.timer.set(timer);
    }

    /// `fut` (one command, pipeline or script), timed.
    async fn timed<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let Some(timer) = self.inner.timer.get() else {
            return fut.await;
        };
        let started = std::time::Instant::now();
        let out = fut.await;
        timer.observe(started.elapsed().as_secs_f64());
        out
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

    /// Runs `fut` on the store's runtime (where its connections live) and waits for it
    /// without holding a thread.
    async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.inner
            .runtime
            .spawn(fut)
            .await
            .map_err(|_| fail("the Redis task ended without an answer"))?
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
        self.timed(async { cmd.query_async(&mut c).await.map_err(fail) })
            .await
    }

    async fn pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        let mut c = self.link().await?;
        self.timed(async { pipe.query_async(&mut c).await.map_err(fail) })
            .await
    }

    /// Commands on keys of any slots, their replies in order: one pipeline on a server; on a
    /// cluster, sent together (each node gets its own on the multiplexed connections).
    async fn many<T: FromRedisValue>(&self, cmds: Vec<Cmd>) -> Result<Vec<T>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let link = self.link().await?;
        self.timed(async move {
            match link {
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
        })
        .await
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
        let link = self.link().await?;
        self.timed(async move {
            match link {
                LinkConn::Single(mut c) => cmd.query_async(&mut c).await.map_err(fail),
                LinkConn::Cluster(mut c) => {
                    let v = c.route_command(cmd, routing).await.map_err(fail)?;
                    T::from_redis_value(v).map_err(fail)
                }
            }
        })
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_patterns_escape_the_prefix() {
        assert_eq!(glob_escape("bindgate:"), "bindgate:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
