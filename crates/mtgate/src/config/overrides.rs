//! Command-line values, applied to the raw file before it is checked.

use super::raw::{self, RawConfig};
use super::{invalid, ConfigError};
use mtgate_proto::secret::ProxySecret;

/// Values given on the command line; they override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Vec<String>,
    /// `NAME=SECRET` or `SECRET`.
    pub secrets: Vec<String>,
    /// `N=ADDR`.
    pub dcs: Vec<String>,
    pub domains: Vec<String>,
    pub mask_host: Option<String>,
    pub public_host: Option<String>,
    pub state_dir: Option<String>,
    pub modes: Option<Vec<String>>,
    pub prefer_ipv6: bool,
    pub workers: Option<usize>,
    /// `[site]` from the command line.
    pub site_hosts: Vec<String>,
    pub site_dir: Option<String>,
    pub site_upstream: Option<String>,
    pub site_cert: Option<String>,
    pub site_key: Option<String>,
}

pub(super) fn apply_overrides(raw: &mut RawConfig, ov: &Overrides) -> Result<(), ConfigError> {
    if !ov.listen.is_empty() {
        raw.server.listen = Some(ov.listen.clone());
    }
    if let Some(m) = &ov.modes {
        raw.server.default_modes = Some(m.clone());
    }
    if let Some(h) = &ov.public_host {
        raw.server.public_host = Some(h.clone());
    }
    if let Some(d) = &ov.state_dir {
        raw.server.state_dir = Some(d.clone());
    }
    if !ov.domains.is_empty() {
        raw.tls.domains = Some(ov.domains.clone());
    }
    if let Some(m) = &ov.mask_host {
        raw.tls.mask_host = Some(m.clone());
    }
    if let Some(w) = ov.workers {
        raw.server.workers = Some(w);
    }
    if ov.prefer_ipv6 {
        raw.upstream.prefer = Some("ipv6".into());
    }
    if !ov.site_hosts.is_empty() {
        raw.site.hosts = ov.site_hosts.clone();
    }
    for (field, v) in [
        (&mut raw.site.dir, &ov.site_dir),
        (&mut raw.site.upstream, &ov.site_upstream),
        (&mut raw.site.cert, &ov.site_cert),
        (&mut raw.site.key, &ov.site_key),
    ] {
        if v.is_some() {
            field.clone_from(v);
        }
    }
    for (i, s) in ov.secrets.iter().enumerate() {
        let (name, secret) = match s.split_once('=') {
            Some((n, s)) if !n.is_empty() && !s.is_empty() && ProxySecret::parse(s).is_ok() => {
                (n.to_owned(), s.to_owned())
            }
            _ => (format!("user{}", i + 1), s.clone()),
        };
        raw.users.insert(
            name,
            raw::RawUser {
                secret: Some(secret),
                ..Default::default()
            },
        );
    }
    for d in &ov.dcs {
        let (n, a) = d
            .split_once('=')
            .ok_or_else(|| invalid("--dc", format!("`{d}`: want N=IP:PORT")))?;
        raw.dcs
            .entry(n.to_owned())
            .or_default()
            .push(toml::Value::String(a.to_owned()));
    }
    Ok(())
}
