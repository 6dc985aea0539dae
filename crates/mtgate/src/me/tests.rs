//! The `[me]` configuration section.

use crate::config::{Config, ConfigError, Overrides};

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, &Overrides::default())
}

fn err(text: &str) -> String {
    load(text).unwrap_err().to_string()
}

const FILES: &str = "proxy_secret_file = \"/x/secret\"\nproxy_config_file = \"/x/conf\"\n";

#[test]
fn off_by_default_and_on_with_a_tag() {
    let c = load("").unwrap();
    assert!(!c.me.enabled);
    assert!(c.me.fallback_direct);
    let c = load(&format!(
        "[me]\nad_tag = \"0123456789abcdef0123456789ABCDEF\"\n{FILES}"
    ))
    .unwrap();
    assert!(c.me.enabled);
    assert_eq!(c.me.ad_tag.unwrap()[15], 0xef);
    assert_eq!(c.me.connections_per_addr, 2);
    assert!(!c.me.crc32c);
    let c = load(&format!(
        "[me]\nenabled = false\nad_tag = \"0123456789abcdef0123456789abcdef\"\n{FILES}"
    ))
    .unwrap();
    assert!(!c.me.enabled);
}

#[test]
fn per_user_tag_overrides_the_global_one() {
    let c = load(&format!(
        "[me]\n{FILES}ad_tag = \"00000000000000000000000000000001\"\n\
         [users.alice]\nsecret = \"00112233445566778899aabbccddeeff\"\nad_tag = \"000000000000000000000000000000aa\"\n\
         [users.bob]\nsecret = \"00112233445566778899aabbccddeefe\"\n"
    ))
    .unwrap();
    assert_eq!(c.me.ad_tag_for("alice").unwrap()[15], 0xaa);
    assert_eq!(c.me.ad_tag_for("bob").unwrap()[15], 0x01);
    // A user tag alone turns ME mode on.
    let c = load(&format!(
        "[me]\n{FILES}[users.alice]\nsecret = \"00112233445566778899aabbccddeeff\"\nad_tag = \"000000000000000000000000000000aa\"\n"
    ))
    .unwrap();
    assert!(c.me.enabled);
    assert_eq!(c.me.ad_tag_for("nobody"), None);
}

#[test]
fn errors_name_the_key() {
    assert!(err("[me]\nad_tag = \"xyz\"\n").starts_with("me.ad_tag:"));
    assert!(err("[me]\nenabled = true\n").starts_with("me.proxy_secret_file:"));
    assert!(err("[me]\nenabled = true\nproxy_secret_file = \"/s\"\n")
        .starts_with("me.proxy_config_file:"));
    assert!(
        err(&format!("[me]\nenabled = true\n{FILES}nat_ip = \"nope\"\n")).starts_with("me.nat_ip:")
    );
    assert!(err(&format!(
        "[me]\nenabled = true\n{FILES}connections_per_addr = 0\n"
    ))
    .starts_with("me.connections_per_addr:"));
    assert!(err(&format!(
        "[me]\nenabled = true\n{FILES}backoff_initial = \"10s\"\nbackoff_max = \"1s\"\n"
    ))
    .starts_with("me.backoff_max:"));
    assert!(err(&format!(
        "[me]\nenabled = true\n{FILES}ping_interval = \"1ms\"\n"
    ))
    .starts_with("me.ping_interval:"));
    assert!(err(&format!(
        "[me]\nenabled = true\n{FILES}reload_interval = \"0s\"\n"
    ))
    .starts_with("me.reload_interval:"));
    assert!(err("[me]\nbogus = 1\n").contains("me"));
    assert!(
        err("[users.a]\nsecret = \"00112233445566778899aabbccddeeff\"\nad_tag = \"12\"\n")
            .starts_with("users.a.ad_tag:")
    );
}
