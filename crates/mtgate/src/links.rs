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
    let mut out = format!("user {}:\n", user.name);
    let secrets = user.client_secrets(domain);
    for s in &secrets {
        out.push_str(&format!(
            "  {}\n  {}\n",
            s.tg_link(host, port),
            s.tme_link(host, port)
        ));
    }
    if let (true, Some(best)) = (qr, secrets.first()) {
        if let Ok(code) = QrCode::new(best.tme_link(host, port).as_bytes()) {
            let img = code
                .render::<Dense1x2>()
                .dark_color(Dense1x2::Light)
                .light_color(Dense1x2::Dark)
                .quiet_zone(true)
                .build();
            out.push_str(&img);
            out.push('\n');
        }
    }
    out
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
    for u in users {
        out.write_all(render_user(u, domain, &host, port, qr).as_bytes())?;
    }
    Ok(())
}
