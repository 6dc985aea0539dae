//! The shared store on Redis (the `redis` crate, async): one server (a
//! multiplexed connection that reconnects by itself), the master Redis
//! Sentinel names (asked again after any failure), or a Redis Cluster.
//! Every key starts with the hash tag `{PREFIX}`, so in a cluster all live
//! in one slot.
//!
//! A replay entry is `PREFIX:replay:<32 hex digits>` = the node that saw it,
//! set with `NX` and `EX` the replay window: `SET` answers `OK` for a new
//! handshake and nil for one any node has marked. One round trip a
//! handshake; a batch (the queue after an outage) is one pipeline.
//!
//! Connection counts: each node keeps `PREFIX:conns:NODE`, a hash user →
//! open connections, replaced and given a fresh expiry every sync, and its
//! heartbeat in the sorted set `PREFIX:nodes` (score: Unix ms); nodes not
//! heard from within the expiry are dropped from the set and their hash
//! runs out, so a node that dies stops counting by itself.
//!
//! Quota usage: `PREFIX:bytes:USER` (lifetime) and
//! `PREFIX:period:USER:START` (the calendar period starting at START, Unix
//! ms; expires a day after its end), each node `INCRBY` its bytes since its
//! last sync; the answer is every node's total.
//!
//! Admin edits: `PREFIX:managed:WHAT` holds the content, and
//! `PUBLISH PREFIX:events "NODE WHAT"` tells every node, each subscribed on
//! a connection of its own.

use super::{
    Announcements, Backend, BackendError, NodeState, SharedConfig, StoreFuture, SyncView,
    UsageDelta,
};
use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use arc_swap::ArcSwapOption;
use std::sync::Arc;
use std::time::Duration;

/// A connection to one server or to a Redis Cluster.
#[derive(Clone)]
enum Conn {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a ::redis::Cmd,
    ) -> ::redis::RedisFuture<'a, ::redis::Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a ::redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> ::redis::RedisFuture<'a, Vec<::redis::Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Redis as the shared store: one server, the master the sentinels name,
/// or a Redis Cluster.
pub struct RedisBackend {
    /// The server (or, with sentinels, its password and database; with a
    /// cluster, the first node, for pub/sub).
    client: ::redis::Client,
    /// Sentinels to ask for the master, on every (re)connection.
    sentinel: Option<tokio::sync::Mutex<SentinelClient>>,
    /// The cluster's nodes, when it is one.
    cluster: Option<ClusterClient>,
    /// The connection in use (lock-free to read) and the client for
    /// pub/sub; forgotten after a failure when sentinels name the master,
    /// so a failover is followed.
    conn: ArcSwapOption<(::redis::Client, Conn)>,
    connecting: tokio::sync::Mutex<()>,
    node: String,
    prefix: String,
    timeout: Duration,
}

fn store(e: impl std::fmt::Display) -> BackendError {
    BackendError::Store(e.to_string())
}

impl RedisBackend {
    pub fn new(cfg: &SharedConfig) -> Result<Self, BackendError> {
        let cluster = if cfg.cluster.is_empty() {
            None
        } else {
            let urls: Vec<String> = cfg.cluster.iter().map(|s| format!("redis://{s}")).collect();
            Some(ClusterClient::new(urls).map_err(store)?)
        };
        let client = match cfg.cluster.first() {
            Some(first) => ::redis::Client::open(format!("redis://{first}")).map_err(store)?,
            None => ::redis::Client::open(cfg.redis.as_str()).map_err(store)?,
        };
        let sentinel = if cfg.sentinels.is_empty() {
            None
        } else {
            let urls: Vec<String> = cfg
                .sentinels
                .iter()
                .map(|s| format!("redis://{s}"))
                .collect();
            let info = SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(client.get_connection_info().redis_settings().clone());
            let s = SentinelClient::build(
                urls,
                cfg.master.clone(),
                Some(info),
                SentinelServerType::Master,
            )
            .map_err(store)?;
            Some(tokio::sync::Mutex::new(s))
        };
        Ok(Self {
            client,
            sentinel,
            cluster,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            node: cfg.node.clone(),
            // One hash tag for every key: in a Redis Cluster they all live
            // in one slot, so pipelines never span nodes.
            prefix: format!("{{{}}}", cfg.prefix),
            timeout: cfg.timeout,
        })
    }

    /// The connection, made on first use (a failure is retried next time):
    /// to the server, or to the master the sentinels name now.
    async fn connected(&self) -> Result<Arc<(::redis::Client, Conn)>, BackendError> {
        if let Some(c) = self.conn.load_full() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.conn.load_full() {
            return Ok(c);
        }
        if let Some(cluster) = &self.cluster {
            let conn = cluster.get_async_connection().await.map_err(store)?;
            let c = Arc::new((self.client.clone(), Conn::Cluster(conn)));
            self.conn.store(Some(c.clone()));
            return Ok(c);
        }
        let client = match &self.sentinel {
            None => self.client.clone(),
            Some(s) => s.lock().await.async_get_client().await.map_err(store)?,
        };
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(self.timeout.max(Duration::from_millis(200))))
            .set_number_of_retries(1);
        let cm = ConnectionManager::new_with_config(client.clone(), cfg)
            .await
            .map_err(store)?;
        let c = Arc::new((client, Conn::One(cm)));
        self.conn.store(Some(c.clone()));
        Ok(c)
    }

    async fn conn(&self) -> Result<Conn, BackendError> {
        Ok(self.connected().await?.1.clone())
    }

    /// After a failure: with sentinels, ask them again next time (the
    /// master may have moved); one server reconnects by itself.
    fn failed<T>(&self, r: Result<T, BackendError>) -> Result<T, BackendError> {
        if r.is_err() && self.sentinel.is_some() {
            self.conn.store(None);
        }
        r
    }

    fn replay_key(&self, fp: &[u8; 16]) -> String {
        format!("{}:replay:{}", self.prefix, hex::encode(fp))
    }
}

impl Backend for RedisBackend {
    fn mark<'a>(&'a self, fps: &'a [[u8; 16]], ttl: Duration) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            let r: Result<_, BackendError> = async {
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
            }
            .await;
            self.failed(r)
        })
    }

    fn sync<'a>(
        &'a self,
        node: &'a str,
        state: &'a NodeState,
        ttl: Duration,
    ) -> StoreFuture<'a, SyncView> {
        let conns = &state.conns;
        Box::pin(async move {
            let r: Result<_, BackendError> = async {
                let mut conn = self.conn().await?;
                let now = crate::civil::unix_now().saturating_mul(1000);
                let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
                let nodes_key = format!("{}:nodes", self.prefix);
                let mine = format!("{}:conns:{node}", self.prefix);
                let mut pipe = ::redis::pipe();
                pipe.cmd("DEL").arg(&mine).ignore();
                if !conns.is_empty() {
                    let cmd = pipe.cmd("HSET").arg(&mine);
                    for (user, n) in conns {
                        cmd.arg(user).arg(n);
                    }
                    cmd.ignore();
                    pipe.cmd("PEXPIRE").arg(&mine).arg(ttl_ms).ignore();
                }
                let ips_key = format!("{}:ips:{node}", self.prefix);
                pipe.cmd("DEL").arg(&ips_key).ignore();
                let listed: Vec<_> = state.ips.iter().filter(|(_, v)| !v.is_empty()).collect();
                if !listed.is_empty() {
                    let cmd = pipe.cmd("HSET").arg(&ips_key);
                    for (user, keys) in &listed {
                        let text: Vec<String> = keys.iter().map(ToString::to_string).collect();
                        cmd.arg(user).arg(text.join(" "));
                    }
                    cmd.ignore();
                    pipe.cmd("PEXPIRE").arg(&ips_key).arg(ttl_ms).ignore();
                }
                pipe.cmd("ZADD").arg(&nodes_key).arg(now).arg(node).ignore();
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(&nodes_key)
                    .arg("-inf")
                    .arg(now.saturating_sub(ttl_ms))
                    .ignore();
                pipe.cmd("ZRANGE").arg(&nodes_key).arg(0).arg(-1);
                let (nodes,): (Vec<String>,) = pipe.query_async(&mut conn).await.map_err(store)?;
                let others: Vec<&String> = nodes.iter().filter(|n| n.as_str() != node).collect();
                let mut remote = std::collections::HashMap::new();
                let mut remote_ips: std::collections::HashMap<String, Vec<std::net::IpAddr>> =
                    std::collections::HashMap::new();
                if !others.is_empty() {
                    let mut read = ::redis::pipe();
                    for n in &others {
                        read.cmd("HGETALL")
                            .arg(format!("{}:conns:{n}", self.prefix));
                        read.cmd("HGETALL").arg(format!("{}:ips:{n}", self.prefix));
                    }
                    let all: Vec<std::collections::HashMap<String, String>> =
                        read.query_async(&mut conn).await.map_err(store)?;
                    for (i, hash) in all.into_iter().enumerate() {
                        for (user, v) in hash {
                            if i % 2 == 0 {
                                let c: u32 = v.parse().unwrap_or(0);
                                let e: &mut u32 = remote.entry(user).or_default();
                                *e = e.saturating_add(c);
                            } else {
                                let e = remote_ips.entry(user).or_default();
                                for k in v.split(' ').filter_map(|s| s.parse().ok()) {
                                    if !e.contains(&k) && e.len() < 4096 {
                                        e.push(k);
                                    }
                                }
                            }
                        }
                    }
                }
                Ok(SyncView {
                    nodes,
                    remote,
                    remote_ips,
                })
            }
            .await;
            self.failed(r)
        })
    }

    fn add_usage<'a>(&'a self, deltas: &'a [UsageDelta]) -> StoreFuture<'a, Vec<(u64, u64)>> {
        Box::pin(async move {
            let r: Result<_, BackendError> = async {
                let mut conn = self.conn().await?;
                let mut pipe = ::redis::pipe();
                for d in deltas {
                    pipe.cmd("INCRBY")
                        .arg(format!("{}:bytes:{}", self.prefix, d.user))
                        .arg(d.bytes);
                    if let Some((start, end, bytes)) = d.period {
                        let key = format!("{}:period:{}:{start}", self.prefix, d.user);
                        pipe.cmd("INCRBY").arg(&key).arg(bytes);
                        pipe.cmd("PEXPIREAT")
                            .arg(&key)
                            .arg(end.saturating_add(86_400_000))
                            .ignore();
                    }
                }
                let totals: Vec<u64> = pipe.query_async(&mut conn).await.map_err(store)?;
                let mut it = totals.into_iter();
                let mut out = Vec::with_capacity(deltas.len());
                for d in deltas {
                    let life = it.next().unwrap_or(0);
                    let period = if d.period.is_some() {
                        it.next().unwrap_or(0)
                    } else {
                        0
                    };
                    out.push((life, period));
                }
                Ok(out)
            }
            .await;
            self.failed(r)
        })
    }

    fn publish<'a>(
        &'a self,
        node: &'a str,
        what: &'a str,
        content: &'a [u8],
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let r: Result<_, BackendError> = async {
                let mut conn = self.conn().await?;
                let mut pipe = ::redis::pipe();
                pipe.cmd("SET")
                    .arg(format!("{}:managed:{what}", self.prefix))
                    .arg(content)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(format!("{}:events", self.prefix))
                    .arg(format!("{node} {what}"))
                    .ignore();
                pipe.query_async::<()>(&mut conn).await.map_err(store)
            }
            .await;
            self.failed(r)
        })
    }

    fn fetch<'a>(&'a self, what: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let r: Result<_, BackendError> = async {
                let mut conn = self.conn().await?;
                ::redis::cmd("GET")
                    .arg(format!("{}:managed:{what}", self.prefix))
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
                    .map_err(store)
            }
            .await;
            self.failed(r)
        })
    }

    fn listen(&self) -> StoreFuture<'_, Announcements> {
        Box::pin(async move {
            let r: Result<_, BackendError> = async {
                use futures_util::StreamExt;
                let mut sub = self
                    .connected()
                    .await?
                    .0
                    .get_async_pubsub()
                    .await
                    .map_err(store)?;
                sub.subscribe(format!("{}:events", self.prefix))
                    .await
                    .map_err(store)?;
                let stream = sub.into_on_message().filter_map(|m| async move {
                    let text: String = m.get_payload().ok()?;
                    let (node, what) = text.split_once(' ')?;
                    Some((node.to_owned(), what.to_owned()))
                });
                Ok(Box::pin(stream) as Announcements)
            }
            .await;
            self.failed(r)
        })
    }

    fn reset_usage<'a>(
        &'a self,
        user: &'a str,
        period: Option<i64>,
        period_only: bool,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let r: Result<_, BackendError> = async {
                let mut conn = self.conn().await?;
                let mut keys: Vec<String> = period
                    .map(|start| format!("{}:period:{user}:{start}", self.prefix))
                    .into_iter()
                    .collect();
                if !period_only {
                    keys.push(format!("{}:bytes:{user}", self.prefix));
                }
                if keys.is_empty() {
                    return Ok(());
                }
                ::redis::cmd("DEL")
                    .arg(keys)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(store)
            }
            .await;
            self.failed(r)
        })
    }
}
