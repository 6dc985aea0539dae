//! The shared store on Redis (the `redis` crate, async, one multiplexed
//! connection that reconnects by itself).
//!
//! A replay entry is `PREFIX:replay:<32 hex digits>` = the node that saw it,
//! set with `NX` and `EX` the replay window: `SET` answers `OK` for a new
//! handshake and nil for one any node has marked. One round trip a
//! handshake; a batch (the queue after an outage) is one pipeline.

use super::{Backend, BackendError, SharedConfig, StoreFuture};
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;
use tokio::sync::OnceCell;

/// Redis as the shared store.
pub struct RedisBackend {
    client: ::redis::Client,
    conn: OnceCell<ConnectionManager>,
    node: String,
    prefix: String,
    timeout: Duration,
}

fn store(e: impl std::fmt::Display) -> BackendError {
    BackendError::Store(e.to_string())
}

impl RedisBackend {
    pub fn new(cfg: &SharedConfig) -> Result<Self, BackendError> {
        Ok(Self {
            client: ::redis::Client::open(cfg.redis.as_str()).map_err(store)?,
            conn: OnceCell::new(),
            node: cfg.node.clone(),
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout,
        })
    }

    /// The connection, made on first use (a failure is retried next time).
    async fn conn(&self) -> Result<ConnectionManager, BackendError> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
                    .set_response_timeout(Some(self.timeout.max(Duration::from_millis(200))))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), cfg)
                    .await
                    .map_err(store)
            })
            .await?;
        Ok(c.clone())
    }

    fn replay_key(&self, fp: &[u8; 16]) -> String {
        format!("{}:replay:{}", self.prefix, hex::encode(fp))
    }
}

impl Backend for RedisBackend {
    fn mark<'a>(&'a self, fps: &'a [[u8; 16]], ttl: Duration) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            let mut conn = self.conn().await?;
            let mut pipe = ::redis::pipe();
            for fp in fps {
                pipe.cmd("SET")
                    .arg(self.replay_key(fp))
                    .arg(&self.node)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl.as_secs().max(1));
            }
            let set: Vec<Option<String>> = pipe.query_async(&mut conn).await.map_err(store)?;
            // nil: the key was there, another handshake marked it first.
            Ok(set.into_iter().map(|r| r.is_none()).collect())
        })
    }
}
