//! The state service's storage interface, shared by its two engines: what a write must
//! survive, how a session update is decided, how sessions are read a chunk at a time, and the
//! one storage error.

/// The storage failed (disk full, I/O error, corruption).
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(String);

impl StoreError {
    pub fn new(why: String) -> Self {
        StoreError(why)
    }

    /// Whether the store refused bindgate's credentials (Redis `WRONGPASS`, `NOAUTH`, a failed
    /// `AUTH`): a configuration to fix, not a store that does not answer.
    pub fn refuses_credentials(&self) -> bool {
        let why = self.0.to_ascii_uppercase();
        [
            "WRONGPASS",
            "NOAUTH",
            "AUTHENTICATION",
            "INVALID PASSWORD",
            "INVALID USERNAME-PASSWORD",
        ]
        .iter()
        .any(|m| why.contains(m))
    }
}

pub(super) fn fail(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

pub(super) type Result<T> = std::result::Result<T, StoreError>;

/// What became of a registration's write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// Stored (and the single-use token, if any, used up with it).
    Stored,
    /// The single-use token was used already: nothing stored.
    TokenUsed,
    /// A client with this id exists (a `preferred_client_id` taken): nothing stored, the
    /// token not used.
    IdTaken,
}

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

/// Sessions read from a snapshot a chunk at a time.
#[async_trait::async_trait]
pub trait Chunks: Send {
    /// The next up to `max` sessions, or None when all were read.
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Entries>>;
}

/// Sessions read by blocking calls (a redb read transaction): [`OffWorkers`] makes them
/// [`Chunks`] read on the blocking pool.
pub trait BlockingChunks: Send + 'static {
    fn next_chunk_blocking(&mut self, max: usize) -> Result<Option<Entries>>;
}

/// A blocking snapshot read a chunk at a time on the blocking pool, never on a worker.
pub struct OffWorkers<C>(Option<C>);

impl<C> OffWorkers<C> {
    pub fn new(snapshot: C) -> Self {
        OffWorkers(Some(snapshot))
    }
}

#[async_trait::async_trait]
impl<C: BlockingChunks> Chunks for OffWorkers<C> {
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Entries>> {
        let Some(mut snapshot) = self.0.take() else {
            return Err(fail("the snapshot was lost by a failed read"));
        };
        let (snapshot, chunk) = tokio::task::spawn_blocking(move || {
            let chunk = snapshot.next_chunk_blocking(max);
            (snapshot, chunk)
        })
        .await
        .map_err(|_| fail("a storage task failed"))?;
        self.0 = Some(snapshot);
        chunk
    }
}
