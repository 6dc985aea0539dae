//! A real `redis-server` (Debian package `redis-server`, installed by
//! `scripts/test.sh`) on a loopback port of the test's own, without
//! persistence; killed on drop. Also as a replica, or as a sentinel.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_on(super::free_port())
    }

    /// Starts one on `addr` (a restart on the same port).
    pub fn start_on(addr: SocketAddr) -> RedisServer {
        Self::start_args(addr, &[])
    }

    /// A replica of `master` on a free port.
    pub fn replica_of(master: SocketAddr) -> RedisServer {
        let port = master.port().to_string();
        Self::start_args(super::free_port(), &["--replicaof", "127.0.0.1", &port])
    }

    /// A sentinel on a free port watching `master` as `mymaster` (quorum
    /// 1, down after 1 s), its config file in `dir`.
    pub fn sentinel(master: SocketAddr, dir: &std::path::Path) -> RedisServer {
        let addr = super::free_port();
        let conf = dir.join(format!("sentinel-{}.conf", addr.port()));
        std::fs::write(
            &conf,
            format!(
                "port {}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 3000\n",
                addr.port(),
                master.port()
            ),
        )
        .expect("sentinel.conf");
        Self::spawn(addr, &[conf.to_str().expect("path"), "--sentinel"])
    }

    /// Three cluster-enabled servers joined into a Redis Cluster (every
    /// slot covered, no replicas; `redis-cli --cluster create`), their
    /// files in `dir`; waits until the cluster is `ok`.
    pub fn cluster(dir: &std::path::Path) -> Vec<RedisServer> {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let addr = super::free_port();
                let conf = dir.join(format!("nodes-{}.conf", addr.port()));
                let conf = conf.to_str().expect("path").to_owned();
                Self::start_args(
                    addr,
                    &["--cluster-enabled", "yes", "--cluster-config-file", &conf],
                )
            })
            .collect();
        let cli = std::env::var("MTGATE_REDIS_CLI").unwrap_or("redis-cli".into());
        let out = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| n.addr.to_string()))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("{cli}: {e} (Debian package redis-tools)"));
        assert!(out.status.success(), "{out:?}");
        let start = Instant::now();
        while !nodes
            .iter()
            .all(|n| n.command("CLUSTER INFO").contains("cluster_state:ok"))
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the cluster never got ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        nodes
    }

    /// The URL mtgate takes.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// One command (inline form): the raw answer.
    pub fn command(&self, line: &str) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1))
        else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(format!("{line}\r\n").as_bytes()).is_err() {
            return String::new();
        }
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn start_args(addr: SocketAddr, extra: &[&str]) -> RedisServer {
        let port = addr.port().to_string();
        let mut args = vec!["--bind", "127.0.0.1", "--port", &port];
        args.extend_from_slice(&["--save", "", "--appendonly", "no"]);
        args.extend_from_slice(extra);
        Self::spawn(addr, &args)
    }

    fn spawn(addr: SocketAddr, args: &[&str]) -> RedisServer {
        let bin = std::env::var("MTGATE_REDIS_SERVER").unwrap_or("redis-server".into());
        let child = Command::new(&bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{bin}: {e} (Debian package redis-server; scripts/test.sh installs it)")
            });
        let r = RedisServer {
            addr,
            child: Some(child),
        };
        let start = Instant::now();
        while !r.command("PING").starts_with("+PONG") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server on {addr} never answered PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// Kills it (a crash: no shutdown, no save).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
