//! Certificates for the own site over ACME (RFC 8555; Let's Encrypt by
//! default) with `instant-acme`: TLS-ALPN-01 answered on the client port
//! itself (RFC 8737: the challenge hello is fronted to the site like any
//! other, and the site's resolver answers `acme-tls/1` with the challenge
//! certificate), or HTTP-01 on a plain HTTP listener (port 80).
//!
//! The account's credentials and the certificate live in the state
//! directory (`acme/`, files 0600). A certificate is renewed `renew_before`
//! its end; a failed attempt is logged plainly (the CA's own words: rate
//! limits, refused names) and retried with a doubling back-off up to an
//! hour, while the current certificate keeps being served.

use super::certs::{CertError, Loaded};
use super::Site;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Which challenge proves the hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    TlsAlpn01,
    Http01,
}

/// `[site.acme]`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeConfig {
    pub directory: String,
    pub email: Option<String>,
    pub challenge: Challenge,
    /// The plain HTTP listener (HTTP-01 answers, redirects to HTTPS).
    pub http_listen: Option<SocketAddr>,
    /// Trust roots (PEM) for the ACME server's own TLS (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Renew this long before the certificate ends.
    pub renew_before: Duration,
    /// The first back-off after a failed attempt (doubling up to an hour).
    pub retry: Duration,
}

/// `[site.acme]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub enabled: Option<bool>,
    pub directory: Option<String>,
    pub email: Option<String>,
    pub challenge: Option<String>,
    pub http_listen: Option<String>,
    pub ca_file: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub renew_before: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub retry: Option<Duration>,
}

impl AcmeConfig {
    /// Checks `[site.acme]` (`None` when off); an error names the key.
    pub fn from_raw(raw: RawAcme) -> Result<Option<Self>, (String, String)> {
        let key = |k: &str| format!("site.acme.{k}");
        if !raw.enabled.unwrap_or(false) {
            return Ok(None);
        }
        let directory = raw.directory.unwrap_or_else(|| LETS_ENCRYPT.into());
        if !directory.starts_with("https://") {
            return Err((key("directory"), "an https:// URL".into()));
        }
        if let Some(e) = &raw.email {
            if !e.contains('@') || e.bytes().any(|b| b <= b' ') {
                return Err((key("email"), format!("`{e}` is not an e-mail address")));
            }
        }
        let challenge = match raw.challenge.as_deref() {
            None | Some("tls-alpn-01") => Challenge::TlsAlpn01,
            Some("http-01") => Challenge::Http01,
            Some(o) => {
                return Err((
                    key("challenge"),
                    format!("`{o}`: use tls-alpn-01 or http-01"),
                ))
            }
        };
        let http_listen = match (raw.http_listen, challenge) {
            (Some(a), _) => Some(a.parse().map_err(|_| {
                (
                    key("http_listen"),
                    format!("`{a}` is not an ip:port address"),
                )
            })?),
            (None, Challenge::Http01) => Some(SocketAddr::from(([0, 0, 0, 0], 80))),
            (None, Challenge::TlsAlpn01) => None,
        };
        let renew_before = raw.renew_before.unwrap_or(Duration::from_secs(30 * 86_400));
        let retry = raw.retry.unwrap_or(Duration::from_secs(60));
        if retry < Duration::from_millis(100) {
            return Err((key("retry"), "at least 100ms".into()));
        }
        Ok(Some(Self {
            directory,
            email: raw.email,
            challenge,
            http_listen,
            ca_file: raw.ca_file.map(PathBuf::from),
            renew_before,
            retry,
        }))
    }
}

/// Why an issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("ACME: the CA offers no {0:?} challenge for {1}")]
    NoChallenge(Challenge, String),
    #[error("ACME: authorization for {0} is {1:?}")]
    Authorization(String, AuthorizationStatus),
    #[error("ACME: the order ended {0:?} (a challenge failed: is the name pointed here and the port reachable?)")]
    Order(OrderStatus),
    #[error("ACME: {0}")]
    Cert(#[from] CertError),
    #[error("ACME: the challenge certificate: {0}")]
    Challenge(String),
    #[error("ACME state {path}: {source}")]
    State {
        path: String,
        source: std::io::Error,
    },
}

/// Where ACME keeps its files in the state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("acme")
}

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
    move |source| AcmeError::State {
        path: path.display().to_string(),
        source,
    }
}

/// The certificate ACME obtained earlier, if it is there and covers `hosts`.
pub fn stored(state_dir: &Path, hosts: &[String]) -> Option<Loaded> {
    let d = dir(state_dir);
    let chain = std::fs::read(d.join("cert.pem")).ok()?;
    let key = std::fs::read(d.join("key.pem")).ok()?;
    let l = Loaded::from_pem(&chain, &key, "acme/cert.pem").ok()?;
    hosts.iter().all(|h| l.covers(h)).then_some(l)
}

/// When the next attempt is due: now without an ACME certificate, else
/// `renew_before` its end.
fn due(site: &Site, cfg: &AcmeConfig, hosts: &[String]) -> i64 {
    let current = site.certs.current();
    let ours = current
        .iter()
        .filter(|l| !l.self_signed && hosts.iter().all(|h| l.covers(h)))
        .map(|l| l.not_after)
        .min();
    match ours {
        Some(t) => t - i64::try_from(cfg.renew_before.as_secs()).unwrap_or(i64::MAX / 2),
        None => 0,
    }
}

/// Keeps the site's certificate issued and renewed. Runs until dropped.
pub async fn run(site: Arc<Site>, cfg: AcmeConfig) {
    let mut backoff = cfg.retry;
    loop {
        let hosts = site.live.load().hosts.clone();
        let now = crate::civil::unix_now();
        let due_at = due(&site, &cfg, &hosts);
        if now >= due_at {
            match issue(&site, &cfg, &hosts).await {
                Ok(l) => {
                    tracing::info!(
                        hosts = %hosts.join(","),
                        until = %crate::civil::format_date(l.not_after),
                        "ACME: certificate obtained"
                    );
                    site.certs.set(vec![l]);
                    site.certs.renewal_ok();
                    backoff = cfg.retry;
                    // Never straight into the next order (a certificate
                    // shorter-lived than `renew_before` is due at once).
                    tokio::time::sleep(cfg.retry).await;
                    continue;
                }
                Err(e) => {
                    site.certs.renewal_failed(&e.to_string());
                    tracing::error!(error = %e, retry_in = ?backoff, "ACME: no certificate; the current one stays in use");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(3600));
                    continue;
                }
            }
        }
        let wait = u64::try_from(due_at - now).unwrap_or(0).clamp(1, 3600);
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

async fn account(cfg: &AcmeConfig, state_dir: &Path) -> Result<Account, AcmeError> {
    let builder = || match &cfg.ca_file {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let path = dir(state_dir).join("account.json");
    if let Ok(text) = std::fs::read(&path) {
        if let Ok(creds) = serde_json::from_slice::<AccountCredentials>(&text) {
            return Ok(builder()?.from_credentials(creds).await?);
        }
    }
    let contact: Vec<String> = cfg.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await?;
    let text = serde_json::to_vec(&creds).map_err(|e| AcmeError::Challenge(e.to_string()))?;
    std::fs::create_dir_all(dir(state_dir)).map_err(state_err(&path))?;
    crate::state::write_atomic(&path, &text).map_err(state_err(&path))?;
    Ok(account)
}

/// One issuance for `hosts`: order, challenges, finalize, download, save.
async fn issue(site: &Site, cfg: &AcmeConfig, hosts: &[String]) -> Result<Loaded, AcmeError> {
    let account = account(cfg, &site.state_dir).await?;
    let ids: Vec<Identifier> = hosts.iter().map(|h| Identifier::Dns(h.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let kind = match cfg.challenge {
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        Challenge::Http01 => ChallengeType::Http01,
    };
    let result = async {
        let mut auths = order.authorizations();
        while let Some(a) = auths.next().await {
            let mut a = a?;
            match a.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AcmeError::Authorization(a.identifier().to_string(), other));
                }
            }
            let host = a.identifier().to_string();
            let mut ch = a
                .challenge(kind.clone())
                .ok_or_else(|| AcmeError::NoChallenge(cfg.challenge, host.clone()))?;
            let ka = ch.key_authorization();
            match cfg.challenge {
                Challenge::TlsAlpn01 => {
                    let ck = challenge_cert(&host, ka.digest().as_ref())?;
                    site.certs.set_challenge(&host, Some(ck));
                }
                Challenge::Http01 => site.set_http_token(&ch.token, Some(ka.as_str().to_owned())),
            }
            ch.set_ready().await?;
        }
        let polls = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(90));
        match order.poll_ready(&polls).await? {
            OrderStatus::Ready => {}
            other => return Err(AcmeError::Order(other)),
        }
        let key = order.finalize().await?;
        let chain = order.poll_certificate(&polls).await?;
        Ok((chain, key))
    }
    .await;
    for h in hosts {
        site.certs.set_challenge(h, None);
    }
    site.clear_http_tokens();
    let (chain, key) = result?;
    let loaded = Loaded::from_pem(chain.as_bytes(), key.as_bytes(), "ACME certificate")?;
    let d = dir(&site.state_dir);
    std::fs::create_dir_all(&d).map_err(state_err(&d))?;
    let (cp, kp) = (d.join("cert.pem"), d.join("key.pem"));
    crate::state::write_atomic(&kp, key.as_bytes()).map_err(state_err(&kp))?;
    crate::state::write_atomic(&cp, chain.as_bytes()).map_err(state_err(&cp))?;
    Ok(loaded)
}

/// The TLS-ALPN-01 certificate for `host` (RFC 8737 §3): self-signed, the
/// host as its only name, the critical acmeIdentifier extension holding
/// the SHA-256 of the key authorization.
fn challenge_cert(host: &str, digest: &[u8]) -> Result<Arc<rustls::sign::CertifiedKey>, AcmeError> {
    let e = |e: rcgen::Error| AcmeError::Challenge(e.to_string());
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(e)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let cert = params.self_signed(&key).map_err(e)?;
    // Not through `Loaded`: the critical acmeIdentifier extension is one a
    // certificate parser rightly refuses; only the ACME server reads it.
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|m| AcmeError::Challenge(m.to_owned()))?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|x| AcmeError::Challenge(x.to_string()))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_errors() {
        let off = AcmeConfig::from_raw(RawAcme::default()).unwrap();
        assert!(off.is_none());
        let on = AcmeConfig::from_raw(RawAcme {
            enabled: Some(true),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(on.directory, LETS_ENCRYPT);
        assert_eq!(on.challenge, Challenge::TlsAlpn01);
        assert_eq!(on.http_listen, None);
        let http = AcmeConfig::from_raw(RawAcme {
            enabled: Some(true),
            challenge: Some("http-01".into()),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(http.http_listen, Some("0.0.0.0:80".parse().unwrap()));
        for (raw, k) in [
            (
                RawAcme {
                    enabled: Some(true),
                    directory: Some("http://x".into()),
                    ..Default::default()
                },
                "site.acme.directory",
            ),
            (
                RawAcme {
                    enabled: Some(true),
                    challenge: Some("dns-01".into()),
                    ..Default::default()
                },
                "site.acme.challenge",
            ),
            (
                RawAcme {
                    enabled: Some(true),
                    email: Some("nobody".into()),
                    ..Default::default()
                },
                "site.acme.email",
            ),
        ] {
            assert_eq!(AcmeConfig::from_raw(raw).unwrap_err().0, k);
        }
    }

    #[test]
    fn the_challenge_certificate_carries_the_digest() {
        let ck = challenge_cert("a.test", &[7u8; 32]).unwrap();
        let der = ck.cert[0].as_ref();
        // The acmeIdentifier OID 1.3.6.1.5.5.7.1.31, then OCTET STRING(32) of the digest.
        let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        let at = der
            .windows(oid.len())
            .position(|w| w == oid)
            .expect("extension");
        let tail = &der[at + oid.len()..];
        let digest_at = tail
            .windows(34)
            .position(|w| w[0] == 0x04 && w[1] == 32 && w[2..].iter().all(|b| *b == 7));
        assert!(digest_at.is_some());
    }
}
