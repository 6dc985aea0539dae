//! Records the versions of the crypto crates linked in (from the
//! workspace's Cargo.lock) for `mtgate audit`.

fn main() {
    let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let wanted = [
        "rustls",
        "ring",
        "aes",
        "ctr",
        "sha2",
        "hmac",
        "x25519-dalek",
        "cryptoki",
    ];
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    let mut name = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("name = \"") {
            name = n.strip_suffix('"').map(str::to_owned);
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = \""), name.take()) {
            if wanted.contains(&n.as_str()) {
                let v = v.trim_end_matches('"').to_owned();
                match found.iter_mut().find(|(f, _)| *f == n) {
                    Some((_, vs)) => vs.push(v),
                    None => found.push((n, vec![v])),
                }
            }
        }
    }
    found.sort();
    let list = found
        .iter()
        .map(|(n, vs)| format!("{n} {}", vs.join("/")))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "cargo:rustc-env=MTGATE_CRYPTO_VERSIONS={}",
        if list.is_empty() { "unknown" } else { &list }
    );
}
