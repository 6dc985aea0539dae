//! Links and QR codes for users: `tg://proxy` and `https://t.me/proxy` for
//! each allowed mode, a QR drawn in the terminal (Unicode half blocks), and a
//! PNG written locally. Never a URL to a QR web service.

use crate::config::{Config, User};
use qrcode::render::unicode::Dense1x2;
use qrcode::{Color, QrCode};
use std::io::Write;
use std::path::Path;

/// The host clients should use: `public_host`, else a specific listen IP,
/// else the first global-looking interface address, else 127.0.0.1.
pub fn public_host(cfg: &Config) -> String {
    if let Some(h) = &cfg.public_host {
        return h.clone();
    }
    if let Some(a) = cfg.listen.iter().find(|a| !a.ip().is_unspecified()) {
        return match a.ip() {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
    }
    if let Ok(ifs) = if_addrs::get_if_addrs() {
        if let Some(i) = ifs.iter().find(|i| !i.is_loopback() && i.ip().is_ipv4()) {
            return i.ip().to_string();
        }
    }
    "127.0.0.1".into()
}

/// The port clients should use: the first listener's (actual) port.
pub fn public_port(cfg: &Config, bound: Option<u16>) -> u16 {
    bound
        .or_else(|| cfg.listen.first().map(|a| a.port()))
        .unwrap_or(crate::config::DEFAULT_PORT)
}

/// The text block printed for one user: every link, then a QR of the best one.
pub fn render_user(user: &User, domain: &str, host: &str, port: u16, qr: bool) -> String {
    let now = u64::try_from(crate::civil::unix_now()).unwrap_or(0);
    render_user_at(user, domain, host, port, qr, now)
}

/// A time for people: RFC 3339 in UTC.
fn when(t: u64) -> String {
    crate::civil::rfc3339(t).unwrap_or_else(|| t.to_string())
}

/// [`render_user`] at `now` (Unix seconds): the links of the secret in force
/// (and until when, if it runs out), then each upcoming secret's best link.
pub fn render_user_at(
    user: &User,
    domain: &str,
    host: &str,
    port: u16,
    qr: bool,
    now: u64,
) -> String {
    let mut out = format!("user {}:\n", user.name);
    let current = user.secret_at(now);
    let Some(key) = current.bytes() else {
        out.push_str(&format!(
            "  secret {} is kept in the HSM: its links were printed once, by `mtgate hsm`\n",
            current.id()
        ));
        return out;
    };
    let secrets = user.client_secrets_of(key, domain);
    for s in &secrets {
        out.push_str(&format!(
            "  {}\n  {}\n",
            s.tg_link(host, port),
            s.tme_link(host, port)
        ));
    }
    if current.valid.not_after != u64::MAX {
        out.push_str(&format!("  (until {})\n", when(current.valid.not_after)));
    }
    if let (true, Some(best)) = (qr, secrets.first()) {
        if let Some(img) = qr_text(&best.tme_link(host, port)) {
            out.push_str(&img);
            out.push('\n');
        }
    }
    for s in user.secrets.iter().filter(|s| s.valid.not_before > now) {
        if s.key == current.key {
            continue;
        }
        let Some(key) = s.bytes() else {
            continue;
        };
        if let Some(best) = user.client_secrets_of(key, domain).first() {
            out.push_str(&format!(
                "  upcoming from {} (secret {}):\n  {}\n",
                when(s.valid.not_before),
                s.id(),
                best.tg_link(host, port)
            ));
        }
    }
    out
}

/// A user's WEB proxy links (`[site.webproxy]`): the `dd` secret for the
/// site `host` (and base `path`), as `tg://webproxy` and `t.me/webproxy`.
/// No port: the WEB type is HTTPS on 443. The `dd` stream travels inside
/// TLS here, so a user whose raw TCP modes allow only `ee` gets them too.
/// `None` for a key kept in the HSM (digest mode).
pub fn web_links(user: &User, host: &str, path: Option<&str>) -> Option<(String, String)> {
    let mut secret = Vec::with_capacity(17);
    secret.push(0xdd);
    secret.extend_from_slice(user.key()?.expose());
    let s = mtgate_proto::webproxy::link_secret(&secret, path.is_some());
    let server = match path {
        Some(p) => format!("{host}%2F{}", p.replace('/', "%2F")),
        None => host.to_owned(),
    };
    let q = format!("server={server}&secret={s}");
    Some((
        format!("tg://webproxy?{q}"),
        format!("https://t.me/webproxy?{q}"),
    ))
}

fn qr_text(text: &str) -> Option<String> {
    let code = QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

/// `text` as a QR code in SVG (one path of unit squares, a 4-module quiet
/// zone), for the console; `None` if it does not fit a QR code.
pub fn qr_svg(text: &str) -> Option<String> {
    let code = QrCode::new(text.as_bytes()).ok()?;
    let width = code.width();
    const QUIET: usize = 4;
    let side = width + 2 * QUIET;
    let mut d = String::new();
    for (i, c) in code.to_colors().iter().enumerate() {
        if *c == Color::Dark {
            let (x, y) = (i % width + QUIET, i / width + QUIET);
            d.push_str(&format!("M{x} {y}h1v1h-1z"));
        }
    }
    Some(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {side} {side}\" width=\"{px}\" height=\"{px}\" \
         shape-rendering=\"crispEdges\" role=\"img\"><rect width=\"{side}\" height=\"{side}\" fill=\"#fff\"/>\
         <path d=\"{d}\" fill=\"#000\"/></svg>",
        px = side * 5
    ))
}

/// Writes `text` as a QR code PNG (8 px per module, 4-module quiet zone).
pub fn write_qr_png(text: &str, path: &Path) -> anyhow::Result<()> {
    let code = QrCode::new(text.as_bytes())?;
    let width = code.width();
    let colors = code.to_colors();
    const SCALE: usize = 8;
    const QUIET: usize = 4;
    let side = (width + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, c) in colors.iter().enumerate() {
        if *c == Color::Dark {
            let (mx, my) = (i % width + QUIET, i / width + QUIET);
            for y in my * SCALE..(my + 1) * SCALE {
                pixels[y * side + mx * SCALE..y * side + (mx + 1) * SCALE].fill(0);
            }
        }
    }
    let file = std::fs::File::create(path)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), side as u32, side as u32);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(&pixels)?;
    w.finish()?;
    Ok(())
}

/// Prints every user's links (and QR codes) to `out`.
pub fn print_all(
    out: &mut dyn Write,
    cfg: &Config,
    users: &[User],
    port: u16,
    qr: bool,
) -> std::io::Result<()> {
    let host = public_host(cfg);
    let domain = cfg
        .domains
        .first()
        .map(String::as_str)
        .unwrap_or(crate::config::DEFAULT_DOMAIN);
    let web = cfg.site.webproxy.as_ref().zip(cfg.site.hosts.first());
    for u in users {
        out.write_all(render_user(u, domain, &host, port, qr).as_bytes())?;
        let links = web.and_then(|(w, site)| Some((site, web_links(u, site, w.path.as_deref())?)));
        if let Some((site, (tg, tme))) = links {
            let mut text = format!("  WEB proxy (HTTPS on {site}):\n  {tg}\n  {tme}\n");
            if let (true, Some(img)) = (qr, qr_text(&tme)) {
                text.push_str(&img);
                text.push('\n');
            }
            out.write_all(text.as_bytes())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod web_tests {
    use super::*;

    #[test]
    fn qr_svg_draws_the_code() {
        let svg = qr_svg("tg://proxy?server=h&port=443&secret=dd00").unwrap();
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>"));
        assert!(svg.matches('z').count() > 100, "dark modules drawn");
        assert!(
            qr_svg(&"x".repeat(10_000)).is_none(),
            "too long for a QR code"
        );
    }

    #[test]
    fn links_show_the_secret_in_force_and_the_upcoming_one() {
        let mut u = User::with_key(
            "alice",
            mtgate_crypto::Key16::new([1; 16]),
            crate::config::Modes {
                classic: false,
                secure: true,
                fake_tls: false,
            },
        );
        u.secrets[0].valid.not_after = 2_000;
        u.secrets.push(crate::config::Secret {
            key: mtgate_crypto::Key16::new([2; 16]).into(),
            valid: crate::config::Window {
                not_before: 1_500,
                not_after: u64::MAX,
            },
            hsm: None,
        });
        let before = render_user_at(&u, "x.test", "h", 443, false, 1_000);
        assert!(
            before.contains(&format!("secret=dd{}", "01".repeat(16))),
            "{before}"
        );
        assert!(
            before.contains("(until 1970-01-01T00:33:20+00:00)"),
            "{before}"
        );
        assert!(
            before.contains(&format!(
                "upcoming from 1970-01-01T00:25:00+00:00 (secret {}):\n  tg://proxy?server=h&port=443&secret=dd{}",
                u.secrets[1].id(),
                "02".repeat(16)
            )),
            "{before}"
        );
        let after = render_user_at(&u, "x.test", "h", 443, false, 1_600);
        assert!(
            after.contains(&format!("secret=dd{}", "02".repeat(16))),
            "{after}"
        );
        assert!(
            !after.contains("upcoming") && !after.contains("until"),
            "{after}"
        );
    }

    #[test]
    fn web_links_carry_the_dd_secret_and_the_path() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let u = User::with_key(
            "alice",
            mtgate_crypto::Key16::new(key),
            crate::config::Modes {
                classic: false,
                secure: false,
                fake_tls: true,
            },
        );
        let (tg, tme) = web_links(&u, "proxy.example.com", None).expect("links");
        assert_eq!(
            tg,
            "tg://webproxy?server=proxy.example.com&secret=dd000102030405060708090a0b0c0d0e0f"
        );
        assert!(tme.starts_with("https://t.me/webproxy?server=proxy.example.com&secret=dd"));
        let (tg, _) =
            web_links(&u, "proxy.example.com", Some("dobry-cola-super-app")).expect("links");
        let secret = tg.rsplit_once("secret=").unwrap().1;
        assert!(
            tg.contains("server=proxy.example.com%2Fdobry-cola-super-app&"),
            "{tg}"
        );
        let raw = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret)
            .unwrap();
        assert_eq!(raw[0], 0x70);
        assert_eq!(raw[1], 0xdd);
    }
}
