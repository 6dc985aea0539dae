//! Tests for `[users.NAME.limits]`: sizes, times, defaults, errors naming the key.

use super::*;
use proptest::prelude::*;

fn parse(toml_text: &str) -> Result<UserLimits, ConfigError> {
    let raw: RawUserLimits = toml::from_str(toml_text).map_err(|e| ConfigError::Invalid {
        key: "toml".into(),
        msg: e.to_string(),
    })?;
    UserLimits::from_raw("users.alice.limits", Some(raw))
}

fn err_key(r: Result<UserLimits, ConfigError>) -> String {
    match r {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn default_is_enabled_without_limits() {
    let d = UserLimits::default();
    assert!(d.enabled);
    assert_eq!(d.quota, None);
    assert_eq!(UserLimits::from_raw("k", None).ok(), Some(d.clone()));
    assert_eq!(parse("").ok(), Some(d));
}

#[test]
fn full_example_parses() {
    let l = parse(
        r#"
        enabled = true
        expires = "2027-01-01T00:00:00Z"
        max_connections = 8
        max_ips = 3
        ips_window = "1h"
        quota = "100GB"
        quota_period = "monthly"
        quota_per_period = "10GiB"
        bandwidth_up = "1MB"
        bandwidth_down = "4MB/s"
        "#,
    )
    .unwrap();
    assert_eq!(l.expires_ms, Some(1_798_761_600_000));
    assert_eq!(l.max_connections, Some(8));
    assert_eq!(
        l.max_ips,
        Some(IpLimit {
            max: 3,
            window: Duration::from_secs(3600)
        })
    );
    assert_eq!(l.quota, Some(100_000_000_000));
    assert_eq!(
        l.period_quota,
        Some(PeriodQuota {
            period: QuotaPeriod::Monthly,
            bytes: 10 << 30
        })
    );
    assert_eq!(l.bandwidth_up, Some(1_000_000));
    assert_eq!(l.bandwidth_down, Some(4_000_000));
}

#[test]
fn toml_datetime_and_offsets() {
    let a = parse("expires = 2027-01-01T03:00:00+03:00").unwrap();
    let b = parse("expires = \"2027-01-01T00:00:00Z\"").unwrap();
    assert_eq!(a.expires_ms, b.expires_ms);
    assert_eq!(
        err_key(parse("expires = \"2027-01-01\"")),
        "users.alice.limits.expires"
    );
    assert_eq!(
        err_key(parse("expires = 2027-01-01T00:00:00")),
        "users.alice.limits.expires"
    );
}

#[test]
fn integers_and_defaults() {
    let l = parse("quota = 1000\nmax_ips = 2").unwrap();
    assert_eq!(l.quota, Some(1000));
    assert_eq!(l.max_ips.map(|m| m.window), Some(DEFAULT_IPS_WINDOW));
}

#[test]
fn errors_name_the_key() {
    let k = |s: &str| err_key(parse(s));
    assert_eq!(k("quota = -1"), "users.alice.limits.quota");
    assert_eq!(k("quota = 0"), "users.alice.limits.quota");
    assert_eq!(k("quota = \"10 parsecs\""), "users.alice.limits.quota");
    assert_eq!(k("quota = \"1MB/s\""), "users.alice.limits.quota");
    assert_eq!(
        k("max_connections = 0"),
        "users.alice.limits.max_connections"
    );
    assert_eq!(k("max_ips = 0"), "users.alice.limits.max_ips");
    assert_eq!(k("max_ips = 5000"), "users.alice.limits.max_ips");
    assert_eq!(k("ips_window = \"1h\""), "users.alice.limits.ips_window");
    assert_eq!(
        k("max_ips = 1\nips_window = \"0s\""),
        "users.alice.limits.ips_window"
    );
    assert_eq!(
        k("quota_period = \"daily\""),
        "users.alice.limits.quota_per_period"
    );
    assert_eq!(k("quota_per_period = 5"), "users.alice.limits.quota_period");
    assert_eq!(
        k("quota_period = \"yearly\"\nquota_per_period = 5"),
        "users.alice.limits.quota_period"
    );
    assert_eq!(k("bandwidth_up = \"0\""), "users.alice.limits.bandwidth_up");
    assert!(toml::from_str::<RawUserLimits>("quoat = 5").is_err());
}

#[test]
fn sizes() {
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("10KB"), Ok(10_000));
    assert_eq!(parse_size("10 kib"), Ok(10_240));
    assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
    assert_eq!(parse_size("1.50MiB"), Ok(1_572_864));
    assert_eq!(parse_size(".5KB"), Ok(500));
    assert_eq!(parse_size("2T"), Ok(2_000_000_000_000));
    assert!(matches!(parse_size("16EiB"), Err(SizeError::Unit(_))));
    assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    assert!(matches!(
        parse_size("18446744073709551616"),
        Err(SizeError::Overflow(_))
    ));
    assert!(matches!(
        parse_size("20000000TB"),
        Err(SizeError::Overflow(_))
    ));
    assert!(matches!(parse_size("1.5B"), Err(SizeError::Fraction(_))));
    assert!(matches!(parse_size("1.2.3MB"), Err(SizeError::Syntax(_))));
    assert!(matches!(parse_size("1.MB"), Err(SizeError::Syntax(_))));
    assert!(matches!(parse_size("."), Err(SizeError::Syntax(_))));
    assert!(matches!(parse_size("MB"), Err(SizeError::Syntax(_))));
    assert!(matches!(parse_size(""), Err(SizeError::Empty)));
    assert!(matches!(parse_size("-5"), Err(SizeError::Unit(_))));
    assert_eq!(format_size(10 << 30), "10GiB");
    assert_eq!(format_size(1500), "1500B");
    assert_eq!(format_size(0), "0B");
}

proptest! {
    #[test]
    fn size_never_panics(s in "\\PC{0,40}") {
        let _ = parse_size(&s);
    }

    #[test]
    fn size_grammar_never_panics(s in "[0-9.]{0,45}[ ]?[kKmMgGtTiIbB/s]{0,4}") {
        let _ = parse_size(&s);
    }

    #[test]
    fn size_round_trips(n in any::<u64>()) {
        prop_assert_eq!(parse_size(&format_size(n)), Ok(n));
        prop_assert_eq!(parse_size(&n.to_string()), Ok(n));
    }

    #[test]
    fn size_units_scale(n in 0u64..1_000_000, unit in prop::sample::select(vec![
        ("KB", 1000u64), ("MB", 1_000_000), ("GB", 1_000_000_000),
        ("KiB", 1024), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
    ])) {
        prop_assert_eq!(parse_size(&format!("{n}{}", unit.0)), Ok(n * unit.1));
        prop_assert_eq!(parse_size(&format!("{n} {}", unit.0.to_lowercase())), Ok(n * unit.1));
    }
}

#[test]
fn through_the_whole_config() {
    let text = r#"
[users.alice]
secret = "0123456789abcdef0123456789abcdef"
[users.alice.limits]
quota = "1GiB"
expires = 2027-01-01T00:00:00Z

[users.bob]
secret = "fedcba9876543210fedcba9876543210"
"#;
    let c = crate::config::Config::from_toml(text, &Default::default()).unwrap();
    let alice = c.users.iter().find(|u| u.name == "alice").unwrap();
    assert_eq!(alice.limits.quota, Some(1 << 30));
    assert_eq!(alice.limits.expires_ms, Some(1_798_761_600_000));
    let bob = c.users.iter().find(|u| u.name == "bob").unwrap();
    assert_eq!(bob.limits, UserLimits::default());

    let bad = text.replace("\"1GiB\"", "\"1 GiBi\"");
    let e = crate::config::Config::from_toml(&bad, &Default::default()).unwrap_err();
    assert!(
        e.to_string().starts_with("users.alice.limits.quota: "),
        "{e}"
    );
    let unknown = text.replace("quota =", "qouta =");
    assert!(crate::config::Config::from_toml(&unknown, &Default::default()).is_err());
}
