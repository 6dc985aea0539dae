//! A real nginx on loopback as the mask site: TLS (a self-signed certificate
//! for `mask.test`) on a free port, the distribution's binary (`nginx-light`
//! on Debian; `.ci/run` installs it), its own prefix in a temporary directory.
//! `MTGATE_NGINX` names another binary.
//!
//! Timeouts are nginx's own, shortened so a probe ends within seconds:
//! `client_header_timeout` (which nginx 1.22 also applies to the TLS
//! handshake) and `keepalive_timeout` are both `idle`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    pub addr: SocketAddr,
    /// Its certificate (PEM), for clients to trust.
    pub cert_pem: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> String {
    std::env::var("MTGATE_NGINX").unwrap_or_else(|_| {
        ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nginx")
            .to_string()
    })
}

impl Nginx {
    /// Starts nginx serving TLS for `domain`; waits until it accepts.
    pub fn start(domain: &str, idle: Duration) -> Nginx {
        Self::launch(domain, idle, "root {d};")
    }

    /// nginx as a CDN edge for `domain`: WebSocket upgrades on `path` go on
    /// to `upstream` over plain HTTP (a `ws://` origin), as a CDN's
    /// WebSocket proxying does; anything else is its static site.
    pub fn cdn(domain: &str, path: &str, upstream: SocketAddr) -> Nginx {
        let location = format!(
            "root {{d}};\n    location {path} {{\n      proxy_pass http://{upstream};\n      \
             proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      \
             proxy_set_header Connection \"upgrade\";\n      proxy_read_timeout 3600s;\n    }}"
        );
        Self::launch(domain, Duration::from_secs(30), &location)
    }

    /// `server_body` is the server block's content after TLS (`{d}`: the
    /// prefix directory).
    fn launch(domain: &str, idle: Duration, server_body: &str) -> Nginx {
        let dir = tempfile::tempdir().expect("nginx dir");
        let cert = rcgen::generate_simple_self_signed(vec![domain.to_string()]).expect("cert");
        let p = dir.path();
        std::fs::write(p.join("cert.pem"), cert.cert.pem()).expect("cert");
        std::fs::write(p.join("key.pem"), cert.key_pair.serialize_pem()).expect("key");
        std::fs::write(p.join("index.html"), "<html><body>welcome</body></html>\n").expect("page");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let secs = idle.as_secs().max(1);
        let conf = format!(
            "master_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               client_header_timeout {secs}s;\n  keepalive_timeout {secs}s;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n    server_name {domain};\n\
                 ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n\
                 {body}\n  }}\n}}\n",
            d = p.display(),
            body = server_body.replace("{d}", &p.display().to_string()),
        );
        std::fs::write(p.join("nginx.conf"), conf).expect("conf");
        let bin = binary();
        let child = Command::new(&bin)
            .arg("-p")
            .arg(p)
            .arg("-e")
            .arg(p.join("error.log"))
            .arg("-c")
            .arg(p.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nginx ({bin}): {e}; install it (Debian: apt-get install -y nginx-light; .ci/run does)")
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut n = Nginx {
            addr,
            cert_pem: cert.cert.pem(),
            child,
            _dir: dir,
        };
        let t0 = Instant::now();
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                return n;
            }
            if let Ok(Some(st)) = n.child.try_wait() {
                let log =
                    std::fs::read_to_string(n._dir.path().join("error.log")).unwrap_or_default();
                panic!("nginx exited ({st}): {log}");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "nginx did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
