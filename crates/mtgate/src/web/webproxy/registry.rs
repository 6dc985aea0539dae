//! Which capability belongs to whom: every user's plain and `dd` secret,
//! for every site host (and the base path, if any). A match also says
//! which obfuscated2 mode the app will speak inside its streams.

use mtgate_proto::webproxy::capability;
use std::collections::HashMap;

/// The obfuscated2 form the app uses inside the WEB carrier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WebMode {
    /// The plain 16-byte secret (tags `ef`/`ee`).
    Plain,
    /// The `dd` secret (padded intermediate).
    Dd,
}

/// A user and mode a capability names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub user: String,
    pub mode: WebMode,
    /// The site host the capability was derived for.
    pub host: String,
}

/// Capability → credential, rebuilt when users, hosts or the path change.
#[derive(Default)]
pub struct Registry {
    by_capability: HashMap<String, Credential>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Capabilities are secrets: counted, never printed.
        f.debug_struct("Registry")
            .field("capabilities", &self.by_capability.len())
            .finish()
    }
}

impl Registry {
    /// The capabilities of `users` (name and 16-byte key) for `hosts` and
    /// the base `path`.
    pub fn build<'a>(
        users: impl IntoIterator<Item = (&'a str, &'a [u8; 16])>,
        hosts: &[String],
        path: Option<&str>,
    ) -> Self {
        let mut by_capability = HashMap::new();
        for (name, key) in users {
            let mut dd = Vec::with_capacity(17);
            dd.push(0xdd);
            dd.extend_from_slice(key);
            for host in hosts {
                for (secret, mode) in [(&key[..], WebMode::Plain), (&dd[..], WebMode::Dd)] {
                    by_capability.insert(
                        capability(secret, host, path),
                        Credential {
                            user: name.to_owned(),
                            mode,
                            host: host.clone(),
                        },
                    );
                }
            }
        }
        Self { by_capability }
    }

    /// Whose capability `cap` is (a constant-time compare is not needed: the
    /// lookup is by a keyed hash of the whole value).
    pub fn find(&self, cap: &str) -> Option<&Credential> {
        self.by_capability.get(cap)
    }

    pub fn len(&self) -> usize {
        self.by_capability.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_capability.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vectors_name_their_user_and_mode() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let r = Registry::build([("alice", &key)], &["proxy.example.com".to_string()], None);
        assert_eq!(r.len(), 2);
        let plain = r
            .find("MHLEY5PmW1GWqJkSrlmJpvJUiLhBH_QKy6yKg8a0JPk")
            .unwrap();
        assert_eq!((plain.user.as_str(), plain.mode), ("alice", WebMode::Plain));
        let dd = r
            .find("IpJrt3e7sKtzPyoXy6w-Zj6GGEvsvclN66JzQEfPYLA")
            .unwrap();
        assert_eq!(dd.mode, WebMode::Dd);
        assert!(r
            .find("hHz99Xs93EN1j91G9gpNepXwGNNt5YdAFkEVk_LlqdQ")
            .is_none());
        let v2 = Registry::build(
            [("alice", &key)],
            &["proxy.example.com".to_string()],
            Some("dobry-cola-super-app"),
        );
        assert!(v2
            .find("hHz99Xs93EN1j91G9gpNepXwGNNt5YdAFkEVk_LlqdQ")
            .is_some());
        assert!(!format!("{v2:?}").contains("hHz9"));
    }
}
