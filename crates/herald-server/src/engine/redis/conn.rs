//! The command connection: one Redis behind a `ConnectionManager`, or a
//! Redis Cluster behind redis-rs's cluster client, which routes each command
//! to the master of its key's slot (every key of a stream carries the stream
//! as its hash tag, so a script's keys are always in one slot).
//!
//! Both are multiplexed: one connection per node (per master, on a
//! Cluster), shared by every call, whatever the number of channels.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::CALL_TIMEOUT;
use crate::engine::EngineError;

/// Where the engine's Redis is.
#[derive(Debug, Clone, Copy)]
pub enum RedisTarget<'a> {
    /// One Redis (`engine.redis_url`).
    One(&'a str),
    /// Seed nodes of a Redis Cluster (`engine.redis_cluster`).
    Cluster(&'a [String]),
}

/// The engine's command connection (cheap to clone: clones share it).
#[derive(Clone)]
pub(super) enum Commands {
    One(ConnectionManager),
    Cluster(Arc<LazyCluster>),
}

impl Commands {
    pub(super) fn one(client: ::redis::Client) -> Result<Self, EngineError> {
        // Few, quick retries: while Redis is down a publish should fail
        // fast (503) rather than hold the request; the next call tries again.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(CALL_TIMEOUT));
        ConnectionManager::new_lazy_with_config(client, config)
            .map(Commands::One)
            .map_err(super::engine_error)
    }

    pub(super) fn cluster(seeds: &[String]) -> Result<Self, EngineError> {
        Ok(Commands::Cluster(Arc::new(LazyCluster {
            client: cluster_builder(seeds)
                .build()
                .map_err(super::engine_error)?,
            conn: tokio::sync::Mutex::new(None),
        })))
    }

    /// True on a Redis Cluster: publications go by `SPUBLISH`, and a
    /// pipeline may only hold commands of one slot.
    pub(super) fn sharded(&self) -> bool {
        matches!(self, Commands::Cluster(_))
    }
}

/// The cluster client settings shared by the command and pub/sub
/// connections: bounded connect and answer times, few retries, so that a
/// shard that is down fails a call (503) rather than holding it.
pub(super) fn cluster_builder(seeds: &[String]) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(CALL_TIMEOUT)
        .retries(2)
        .min_retry_wait(50)
        .max_retry_wait(500)
}

/// A cluster connection made on first use, so a node starts (and answers
/// `/ready` 503) while the cluster is unreachable, as it does with one
/// Redis. Once made, the cluster client repairs it by itself (reconnects,
/// topology refresh on MOVED).
pub(super) struct LazyCluster {
    client: ClusterClient,
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
}

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let made = tokio::time::timeout(CALL_TIMEOUT, self.client.get_async_connection())
            .await
            .map_err(|_| {
                ::redis::RedisError::from((
                    ::redis::ErrorKind::Io,
                    "no Redis Cluster node answered in time",
                ))
            })??;
        *slot = Some(made.clone());
        Ok(made)
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::One(c) => c.req_packed_command(cmd),
            Commands::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                c.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::One(c) => c.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                c.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::One(c) => c.get_db(),
            Commands::Cluster(_) => 0,
        }
    }
}
