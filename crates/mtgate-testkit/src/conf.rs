//! Pieces of mtgate config files for tests: everything on loopback, so a test
//! never reaches Telegram or a real mask site.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// The DCs of mtgate's built-in table; a test overrides every one of them.
pub const DEFAULT_DCS: [i16; 6] = [1, 2, 3, 4, 5, 203];

/// `[tls]` without fronting: domain `mask.test`, the mask host a closed
/// loopback port, no profile learning.
pub const TLS_NO_FRONTING: &str = "[tls]\ndomains = [\"mask.test\"]\nmask_host = \"127.0.0.1:1\"\nfronting = false\nlearn_profile = false\n";

/// A user's 16-byte key from its 32 hex digits (a test's own constant: panics
/// on anything else).
pub fn key_from_hex(hex: &str) -> mtgate_crypto::Key16 {
    let bytes: [u8; 16] = hex::decode(hex).expect("hex").try_into().expect("16 bytes");
    mtgate_crypto::Key16::new(bytes)
}

/// A TOML array of strings: `["a", "b"]`.
pub fn toml_list<T: std::fmt::Display>(items: &[T]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// `[dcs]` with every DC of [`DEFAULT_DCS`] at `addrs`.
pub fn dcs_table(addrs: &[SocketAddr]) -> String {
    let list = toml_list(addrs);
    let mut t = String::from("[dcs]\n");
    for n in DEFAULT_DCS {
        let _ = writeln!(t, "{n} = {list}");
    }
    t
}

/// `[users.NAME]` tables, one per `(name, secret hex)`, each with `modes`
/// (none: the server's default modes).
pub fn users_tables(users: &[(&str, &str)], modes: &[&str]) -> String {
    let mut t = String::new();
    for (name, secret) in users {
        let _ = writeln!(t, "[users.{name}]\nsecret = \"{secret}\"");
        if !modes.is_empty() {
            let _ = writeln!(t, "modes = {}", toml_list(modes));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_as_toml() {
        let a: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let b: SocketAddr = "[::1]:6".parse().unwrap();
        let t = dcs_table(&[a, b]);
        assert!(
            t.starts_with("[dcs]\n1 = [\"127.0.0.1:5\", \"[::1]:6\"]\n"),
            "{t}"
        );
        assert_eq!(t.lines().count(), 7);
        assert!(t.ends_with("203 = [\"127.0.0.1:5\", \"[::1]:6\"]\n"));
        let u = users_tables(&[("alice", "00"), ("bob", "ff")], &["dd"]);
        assert_eq!(
            u,
            "[users.alice]\nsecret = \"00\"\nmodes = [\"dd\"]\n[users.bob]\nsecret = \"ff\"\nmodes = [\"dd\"]\n"
        );
        assert_eq!(
            users_tables(&[("a", "1")], &[]),
            "[users.a]\nsecret = \"1\"\n"
        );
    }
}
