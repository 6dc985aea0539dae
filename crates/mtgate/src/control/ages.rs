//! How old each secret is, for `mtgate audit`'s "secrets past a maximum
//! age": `secret-ages.json` in the state directory maps a secret's id to
//! when it came into use (its `not_before` when it has one, else when the
//! running proxy first served it). The expiry pump keeps it ([`observe`],
//! every 2 s; written only when a secret appears or goes); its size is the
//! number of secrets configured.

use std::collections::BTreeMap;
use std::path::Path;

/// The file's name in the state directory.
pub const FILE: &str = "secret-ages.json";

/// Secret id → Unix second it came into use.
pub type Ages = BTreeMap<String, u64>;

/// The saved ages (empty when there are none or the file does not parse).
pub fn load(dir: &Path) -> Ages {
    std::fs::read(dir.join(FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Brings `ages` up to the secrets in use, `(id, not_before)`, at `now`:
/// new ones start at their `not_before` (if set and past) or now; ones no
/// longer configured are forgotten. True if anything changed.
pub fn update(ages: &mut Ages, current: &[(String, u64)], now: u64) -> bool {
    let before = ages.len();
    ages.retain(|id, _| current.iter().any(|(c, _)| c == id));
    let mut changed = ages.len() != before;
    for (id, not_before) in current {
        if !ages.contains_key(id) {
            let start = if *not_before > 0 && *not_before <= now {
                *not_before
            } else {
                now
            };
            ages.insert(id.clone(), start);
            changed = true;
        }
    }
    changed
}

/// [`update`] on the file in `dir`, written atomically when it changed.
pub fn observe(dir: &Path, ages: &mut Ages, current: &[(String, u64)], now: u64) {
    if update(ages, current, now) {
        let written = serde_json::to_vec_pretty(ages)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::state::write_atomic(&dir.join(FILE), &b));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write {FILE}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_start_once_and_follow_the_secrets_in_use() {
        let mut a = Ages::new();
        let cur = vec![("aa".to_owned(), 0), ("bb".to_owned(), 500)];
        assert!(update(&mut a, &cur, 1_000));
        assert_eq!((a["aa"], a["bb"]), (1_000, 500));
        // Later looks change nothing while the same secrets are in use.
        assert!(!update(&mut a, &cur, 9_000));
        assert_eq!(a["aa"], 1_000);
        // An upcoming secret starts when first seen in use, not in the future.
        let next = vec![("aa".to_owned(), 0), ("cc".to_owned(), 20_000)];
        assert!(update(&mut a, &next, 10_000));
        assert_eq!(a.get("bb"), None);
        assert_eq!(a["cc"], 10_000);
        // The file round-trips; a bad file reads as empty.
        let dir = tempfile::tempdir().unwrap();
        let mut saved = Ages::new();
        observe(dir.path(), &mut saved, &next, 10_000);
        assert_eq!(load(dir.path()), saved);
        std::fs::write(dir.path().join(FILE), "{").unwrap();
        assert!(load(dir.path()).is_empty());
    }
}
