//! The connection to Redis: a standalone server (one reconnecting connection) or a cluster,
//! behind one `ConnectionLike`.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, Value};
use std::sync::Arc;
use tokio::sync::OnceCell;

/// A standalone server (reconnecting) or a cluster (connected on first use, retried).
#[derive(Clone)]
pub(super) enum Link {
    Single(ConnectionManager),
    Cluster {
        client: Arc<redis::cluster::ClusterClient>,
        conn: Arc<OnceCell<redis::cluster_async::ClusterConnection>>,
    },
}

/// A connection of either kind, for one command.
pub(super) enum LinkConn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
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
