//! `[policy]` parsing: defaults, the full example, and key-named errors.

use super::*;
use crate::config::{Config, Overrides};

fn parse(text: &str) -> Result<PolicyConfig, String> {
    Config::from_toml(text, &Overrides::default())
        .map(|c| c.policy)
        .map_err(|e| e.to_string())
}

#[test]
fn defaults_are_permissive_but_protective() {
    let p = parse("").unwrap();
    assert_eq!(p.refuse_action, RefuseAction::Front);
    assert_eq!(p.timezone, Tz::UTC);
    assert_eq!(p.acl.default, Level::Full);
    assert!(p.acl.rules.is_empty() && p.acl.files.is_empty());
    assert_eq!(p.rate.mode, Mode::Enforce);
    assert_eq!(p.reputation.mode, Mode::Enforce);
    assert_eq!(p.rate, RateConfig::default());
    assert_eq!(p.reputation, ReputationConfig::default());
    assert_eq!(p.tracking.max_tracked, 100_000);
    assert!(p.geo.is_none());
    assert_eq!(p.ip_table().rate.ipv6_prefix, 64);
    assert_eq!(parse("[policy]\n").unwrap().rate, p.rate);
}

#[test]
fn full_example_parses() {
    let p = parse(
        r#"
[policy]
refuse_action = "close"
timezone = "Europe/Berlin"
[policy.acl]
mode = "monitor"
default = "limited"
rules = [ { cidr = "203.0.113.0/24", level = "blocked" },
          { cidr = "2001:db8::/32", level = "limited", days = ["mon","tue"], hours = "09:00-18:00" },
          { cidr = "::ffff:198.51.100.1", level = "full" } ]
files = [ { path = "/etc/mtgate/blocklist.netset", level = "blocked" } ]
reload_interval = "1m"
[policy.limited]
new_connections_per_second = 0.5
burst = 2
max_connections_per_ip = 3
bandwidth = 32768
[policy.rate]
mode = "monitor"
new_connections_per_second = 10.0
burst = 20
max_connections_per_ip = 64
max_handshake_failures = 5
failure_window = "2m"
ipv6_prefix = 56
[policy.reputation]
threshold = 50.0
half_life = "5m"
failed_handshake = 5.0
replay = 25.0
rate_limited = 1.0
flood = 10.0
block_time = "1m"
block_time_max = "1h"
block_multiplier = 3.0
[policy.tracking]
max_tracked = 5000
[policy.geo]
mode = "enforce"
database = "/var/lib/GeoIP/GeoLite2-Country.mmdb"
allow = ["de", "NL"]
unknown = "deny"
reload_interval = "2h"
"#,
    )
    .unwrap();
    assert_eq!(p.refuse_action, RefuseAction::Close);
    assert_eq!(p.timezone, chrono_tz::Europe::Berlin);
    assert_eq!(p.acl.timezone, chrono_tz::Europe::Berlin);
    assert_eq!(p.acl.mode, Mode::Monitor);
    assert_eq!(p.acl.default, Level::Limited);
    assert_eq!(p.acl.rules.len(), 3);
    assert_eq!(p.acl.rules[2].net.to_string(), "198.51.100.1/32");
    assert!(p.acl.rules[1].window.is_some() && p.acl.rules[0].window.is_none());
    assert_eq!(p.acl.files[0].level, Level::Blocked);
    assert_eq!(p.acl.reload_interval, Duration::from_secs(60));
    assert_eq!(p.limited.conn_limits().max_concurrent, 3);
    assert_eq!(p.limited.bandwidth, 32768);
    assert_eq!(p.rate.ipv6_prefix, 56);
    assert_eq!(p.rate.failure_window, Duration::from_secs(120));
    assert_eq!(p.rate.conn_limits().burst, 20);
    assert_eq!(p.reputation.block_multiplier, 3.0);
    assert_eq!(p.reputation.mode, Mode::Enforce);
    assert_eq!(p.tracking.max_tracked, 5000);
    let g = p.geo.unwrap();
    assert_eq!(g.list, GeoList::Allow(vec![*b"DE", *b"NL"]));
    assert!(!g.unknown_allowed);
    assert_eq!(g.reload_interval, Duration::from_secs(7200));
}

#[test]
fn errors_name_the_key() {
    let cases: &[(&str, &str)] = &[
        ("[policy]\nrefuse_action = \"drop\"", "policy.refuse_action"),
        ("[policy]\ntimezone = \"Mars/Olympus\"", "policy.timezone"),
        ("[policy]\nbogus = 1", "bogus"),
        ("[policy.acl]\nmode = \"sometimes\"", "policy.acl.mode"),
        ("[policy.acl]\ndefault = \"maybe\"", "policy.acl.default"),
        (
            "[policy.acl]\nrules = [{ cidr = \"10.0.0.0/33\", level = \"blocked\" }]",
            "policy.acl.rules[0].cidr",
        ),
        (
            "[policy.acl]\nrules = [{ cidr = \"10.0.0.0/8\", level = \"blocked\" }, { cidr = \"::1\", level = \"nope\" }]",
            "policy.acl.rules[1].level",
        ),
        (
            "[policy.acl]\nrules = [{ cidr = \"10.0.0.0/8\", level = \"full\", hours = \"9-5\" }]",
            "policy.acl.rules[0]",
        ),
        (
            "[policy.acl]\nrules = [{ cidr = \"10.0.0.0/8\", level = \"full\", days = [\"funday\"] }]",
            "policy.acl.rules[0]",
        ),
        (
            "[policy.acl]\nfiles = [{ path = \"\", level = \"blocked\" }]",
            "policy.acl.files[0].path",
        ),
        ("[policy.acl]\nreload_interval = \"10ms\"", "policy.acl.reload_interval"),
        ("[policy.limited]\nbandwidth = 10", "policy.limited.bandwidth"),
        ("[policy.limited]\nburst = 0", "policy.limited.burst"),
        (
            "[policy.rate]\nnew_connections_per_second = 0.0",
            "policy.rate.new_connections_per_second",
        ),
        (
            "[policy.rate]\nnew_connections_per_second = nan",
            "policy.rate.new_connections_per_second",
        ),
        ("[policy.rate]\nipv6_prefix = 129", "policy.rate.ipv6_prefix"),
        ("[policy.rate]\nmax_connections_per_ip = 0", "policy.rate.max_connections_per_ip"),
        ("[policy.rate]\nfailure_window = \"0s\"", "policy.rate.failure_window"),
        ("[policy.reputation]\nthreshold = 0.0", "policy.reputation.threshold"),
        ("[policy.reputation]\nreplay = -1.0", "policy.reputation.replay"),
        ("[policy.reputation]\nhalf_life = \"0s\"", "policy.reputation.half_life"),
        (
            "[policy.reputation]\nblock_time = \"1h\"\nblock_time_max = \"10m\"",
            "policy.reputation.block_time_max",
        ),
        (
            "[policy.reputation]\nblock_multiplier = 0.5",
            "policy.reputation.block_multiplier",
        ),
        ("[policy.tracking]\nmax_tracked = 10", "policy.tracking.max_tracked"),
        ("[policy.geo]\nallow = [\"DE\"]", "policy.geo.database"),
        (
            "[policy.geo]\ndatabase = \"x.mmdb\"\nallow = [\"DE\"]\ndeny = [\"NL\"]",
            "policy.geo",
        ),
        ("[policy.geo]\ndatabase = \"x.mmdb\"", "policy.geo"),
        ("[policy.geo]\ndatabase = \"x.mmdb\"\nallow = [\"DEU\"]", "policy.geo.allow"),
        ("[policy.geo]\ndatabase = \"x.mmdb\"\ndeny = []", "policy.geo.deny"),
        (
            "[policy.geo]\ndatabase = \"x.mmdb\"\ndeny = [\"RU\"]\nunknown = \"maybe\"",
            "policy.geo.unknown",
        ),
    ];
    for (text, key) in cases {
        let e = parse(text).expect_err(text);
        assert!(e.starts_with(key) || e.contains(key), "{text}: {e}");
    }
}

#[test]
fn block_time_max_defaults_to_at_least_block_time() {
    let p = parse("[policy.reputation]\nblock_time = \"48h\"").unwrap();
    assert_eq!(p.reputation.block_time_max, Duration::from_secs(48 * 3600));
}
