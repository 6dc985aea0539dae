//! A real `redis-server` (Debian package `redis-server`, installed by
//! `scripts/test.sh`) on a loopback port of the test's own, without
//! persistence; killed on drop.

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
        let bin = std::env::var("MTGATE_REDIS_SERVER").unwrap_or("redis-server".into());
        let child = Command::new(&bin)
            .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{bin}: {e} (Debian package redis-server; scripts/test.sh installs it)")
            });
        let mut r = RedisServer {
            addr,
            child: Some(child),
        };
        let start = Instant::now();
        while !r.answers() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server on {addr} never answered PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// The URL mtgate takes.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn answers(&mut self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) =
            std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
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
