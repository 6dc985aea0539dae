//! The doctor's own-site checks (`[site]`): each host resolves to this
//! server, the certificate loads, is valid for the host and not near its end,
//! and the client port answers at the host's address.

use super::mask::{dns_check, resolve, MaskResults};
use super::system::{format_date, unix_now};
use super::{Check, DoctorOpts};
use crate::config::Config;
use crate::web::certs;
use std::net::IpAddr;
use std::time::Duration;

/// Warn when the certificate ends within this.
const RENEW_WARN: i64 = 14 * 86_400;

pub async fn check(cfg: &Config, opts: &DoctorOpts, public_ip: Option<IpAddr>) -> MaskResults {
    let mut checks = Vec::new();
    let source = cfg
        .site
        .certs
        .clone()
        .unwrap_or_else(|| certs::Source::SelfSigned {
            dir: cfg.state_dir.clone(),
        });
    let loaded = certs::read_source(&source, &cfg.site.hosts);
    let dns_timeout = opts.timeout.min(Duration::from_secs(5));
    let port = cfg.listen.first().map_or(443, |a| a.port());
    for host in &cfg.site.hosts {
        let dns = resolve(host, dns_timeout).await;
        let mut c = dns_check(host, dns.clone(), public_ip);
        c.name = format!("site dns {host}");
        checks.push(c);
        checks.push(cert_check(host, &loaded));
        checks.push(reach(host, port, dns.ok(), opts.timeout).await);
    }
    MaskResults { checks, date: None }
}

fn cert_check(host: &str, loaded: &Result<certs::Loaded, certs::CertError>) -> Check {
    let name = format!("site cert {host}");
    let l = match loaded {
        Ok(l) => l,
        Err(e) => {
            return Check::fail(
                name,
                e.to_string(),
                "point [site] cert and key at a readable PEM chain (leaf first) and its key",
            )
        }
    };
    let left = l.not_after - unix_now();
    let until = format_date(l.not_after);
    if !l.covers(host) {
        Check::fail(
            name,
            format!(
                "the certificate is not valid for {host} (it names {})",
                l.names.join(", ")
            ),
            format!("get a certificate that names {host}"),
        )
    } else if left <= 0 {
        Check::fail(name, format!("expired on {until}"), "renew the certificate")
    } else if l.self_signed {
        Check::warn(
            name,
            format!("self-signed (until {until}): browsers and the WEB proxy type refuse it"),
            "set [site] cert and key to a certificate from a CA (e.g. Let's Encrypt)",
        )
    } else if left < RENEW_WARN {
        Check::warn(
            name,
            format!(
                "valid for {host} until {until}, {} day(s) left",
                left / 86_400
            ),
            "renew the certificate",
        )
    } else {
        Check::ok(name, format!("valid for {host} until {until}"))
    }
}

/// A TCP connection to the host's address on the client port.
async fn reach(host: &str, port: u16, ips: Option<Vec<IpAddr>>, timeout: Duration) -> Check {
    let name = format!("site port {host}:{port}");
    let Some(ip) = ips.and_then(|v| v.first().copied()) else {
        return Check::warn(
            name,
            "not checked: the host does not resolve",
            format!("point DNS of {host} at this server"),
        );
    };
    let t = timeout.min(Duration::from_secs(5));
    match tokio::time::timeout(t, tokio::net::TcpStream::connect((ip, port))).await {
        Ok(Ok(_)) => Check::ok(name, format!("{ip}:{port} accepts connections")),
        Ok(Err(e)) => Check::warn(
            name,
            format!("{ip}:{port}: {e} (is mtgate running?)"),
            format!("start mtgate, and open TCP port {port} in the firewall"),
        ),
        Err(_) => Check::warn(
            name,
            format!("{ip}:{port}: no answer within {t:?}"),
            format!("open TCP port {port} in the firewall (and any cloud security group)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn loaded(names: &[&str]) -> certs::Loaded {
        let made = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        certs::Loaded::from_pem(
            made.cert.pem().as_bytes(),
            made.key_pair.serialize_pem().as_bytes(),
            "t",
        )
        .unwrap()
    }

    #[test]
    fn certificate_verdicts() {
        let mut l = loaded(&["a.test"]);
        assert_eq!(
            cert_check("a.test", &Ok(loaded(&["a.test"]))).status,
            Status::Warn,
            "self-signed"
        );
        l.self_signed = false;
        let ok = cert_check("a.test", &Ok(l));
        assert_eq!(ok.status, Status::Ok, "{}", ok.detail);
        let mut soon = loaded(&["a.test"]);
        soon.self_signed = false;
        soon.not_after = unix_now() + 3 * 86_400;
        assert_eq!(cert_check("a.test", &Ok(soon)).status, Status::Warn);
        let mut gone = loaded(&["a.test"]);
        gone.not_after = unix_now() - 1;
        assert_eq!(cert_check("a.test", &Ok(gone)).status, Status::Fail);
        let other = cert_check("b.test", &Ok(loaded(&["a.test"])));
        assert_eq!(other.status, Status::Fail);
        assert!(
            other.detail.contains("not valid for b.test"),
            "{}",
            other.detail
        );
        let e = certs::read_source(
            &certs::Source::Files {
                cert: "/nonexistent/c.pem".into(),
                key: "/nonexistent/k.pem".into(),
            },
            &[],
        );
        assert_eq!(cert_check("a.test", &e).status, Status::Fail);
    }
}
