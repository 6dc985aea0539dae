use super::*;
use crate::net::target::Target;

fn err(text: &str) -> String {
    Config::from_toml(text, &Overrides::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn empty_file_gives_working_defaults() {
    let c = Config::from_toml("", &Overrides::default()).unwrap();
    assert_eq!(c.listen, vec!["[::]:443".parse().unwrap()]);
    assert_eq!(
        c.default_modes,
        Modes {
            classic: false,
            secure: false,
            fake_tls: true
        }
    );
    assert_eq!(c.domains, vec![DEFAULT_DOMAIN.to_string()]);
    assert!(c.users.is_empty());
    assert_eq!(c.dcs.resolve(2).unwrap().0, 2);
}

#[test]
fn full_file_parses() {
    let c = Config::from_toml(
        r#"
[server]
listen = ["127.0.0.1:8443", "[::1]:8443"]
public_host = "proxy.example.net"
default_modes = ["ee", "dd"]
idle_timeout = "2m"
[tls]
domains = ["WWW.Example.com"]
mask_host = "127.0.0.1:9443"
fake_cert_len = [1000, 2000]
[upstream]
prefer = "ipv6"
unknown_dc = "close"
[dcs]
2 = ["127.0.0.1:1234", "[::1]:1234"]
[users.alice]
secret = "00112233445566778899aabbccddeeff"
modes = ["classic"]
[users.bob]
secret = "ee0102030405060708090a0b0c0d0e0f107777772e6578616d706c652e636f6d"
[log]
format = "json"
"#,
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.listen.len(), 2);
    assert_eq!(c.domains, vec!["www.example.com"]);
    assert_eq!(c.idle_timeout, Duration::from_secs(120));
    assert_eq!(c.prefer, IpPreference::V6);
    assert_eq!(c.users.len(), 2);
    assert!(c.users[0].modes.classic && !c.users[0].modes.fake_tls);
    assert!(c.users[1].modes.fake_tls && c.users[1].modes.secure);
    assert!(c.log_json);
    assert_eq!(c.dcs.resolve(-2).unwrap().1.len(), 2);
    assert!(c.dcs.resolve(9).is_none());
}

#[test]
fn errors_name_the_key() {
    assert!(
        err("[server]\nlisen = []").contains("lisen"),
        "{}",
        err("[server]\nlisen = []")
    );
    assert!(err("[server]\nlisten = [\"nope\"]").starts_with("server.listen[0]"));
    assert!(err("[server]\nidle_timeout = \"soon\"").contains("server.idle_timeout"));
    assert!(err("[users.a]\nsecret = \"zz\"").starts_with("users.a.secret"));
    assert!(
        err("[users.a]\nsecret = \"00112233445566778899aabbccddeeff\"\nmodes = [\"xx\"]")
            .starts_with("users.a.modes")
    );
    assert!(err("[dcs]\n0 = [\"127.0.0.1:1\"]").starts_with("dcs.0"));
    assert!(err("[tls]\ndomains = [\"bad domain\"]").starts_with("tls.domains[0]"));
    assert!(err("[upstream]\nprefer = \"ipv5\"").starts_with("upstream.prefer"));
    assert!(err("[log]\nlevel = \"loud\"").starts_with("log.level"));
    assert!(err("[upstream]\nfallback_dc = 9").starts_with("upstream.fallback_dc"));
    assert!(err("[bogus]\nx = 1").contains("bogus"));
    let dup = "[users.a]\nsecret = \"00112233445566778899aabbccddeeff\"\n[users.b]\nsecret = \"dd00112233445566778899aabbccddeeff\"";
    assert!(err(dup).contains("share"));
}

#[test]
fn flags_override_the_file() {
    let ov = Overrides {
        listen: vec!["127.0.0.1:0".into()],
        secrets: vec![
            "carol=00112233445566778899aabbccddeeff".into(),
            "dd0102030405060708090a0b0c0d0e0f10".into(),
        ],
        dcs: vec!["2=127.0.0.1:5555".into()],
        domains: vec!["a.example".into()],
        modes: Some(vec!["dd".into(), "ee".into()]),
        ..Default::default()
    };
    let c = Config::from_toml("[server]\nlisten = [\"0.0.0.0:1\"]", &ov).unwrap();
    assert_eq!(c.listen, vec!["127.0.0.1:0".parse().unwrap()]);
    let names: Vec<_> = c.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, vec!["carol", "user2"]);
    assert_eq!(
        c.dcs.resolve(2).unwrap().1,
        &[Target::Addr("127.0.0.1:5555".parse().unwrap())][..]
    );
    assert!(Config::from_overrides(&Overrides {
        dcs: vec!["x".into()],
        ..Default::default()
    })
    .is_err());
}

#[test]
fn handover_socket_and_drain_timeout() {
    let c = Config::from_toml(
        "[server]\nstate_dir = \"/var/lib/x\"\n",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        c.handover_socket.as_deref(),
        Some(std::path::Path::new("/var/lib/x/mtgate.handover.sock"))
    );
    assert_eq!(c.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    let c = Config::from_toml(
        "[server]\nhandover_socket = \"/run/m.sock\"\ndrain_timeout = \"3s\"\n",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        c.handover_socket.as_deref(),
        Some(std::path::Path::new("/run/m.sock"))
    );
    assert_eq!(c.drain_timeout, Duration::from_secs(3));
    let c = Config::from_toml("[server]\nhandover_socket = \"\"\n", &Overrides::default()).unwrap();
    assert!(c.handover_socket.is_none());
    assert!(err(&format!(
        "[server]\nhandover_socket = \"/{}\"\n",
        "a".repeat(120)
    ))
    .contains("server.handover_socket"));
}

#[test]
fn a_dc_group_mixes_kinds_with_weights() {
    let c = Config::from_toml(
        "[upstream.chains]\neu = [\"socks5://u:p@10.0.0.9:1080\", \"socks5://10.0.0.8:1080\"]\n\
         [upstream.websocket]\nenabled = true\n\
         [dcs]\n2 = [\"1.2.3.4:443\", { addr = \"1.2.3.4:443\", via = \"eu\", weight = 3 }, \
         { addr = \"5.6.7.8:443\", via = \"direct\" }, { websocket = true, weight = 2 }]\n",
        &Overrides::default(),
    )
    .unwrap();
    let group = c.dcs.resolve(2).unwrap().1;
    let a: std::net::SocketAddr = "1.2.3.4:443".parse().unwrap();
    let eu = Target::Via {
        addr: a,
        chain: "eu".into(),
    };
    assert_eq!(group.len(), 4);
    assert_eq!(group[0], Target::Addr(a));
    assert_eq!(group[1], eu);
    assert_eq!(group[2].to_string(), "5.6.7.8:443 via direct");
    assert_eq!(group[3], Target::WebSocket { dc: 2 });
    assert_eq!(c.balance.weights[&eu], 3);
    assert_eq!(c.balance.weights[&Target::WebSocket { dc: 2 }], 2);
    assert_eq!(c.chains["eu"].len(), 2);
    // Credentials are kept, never printed.
    assert!(!format!("{:?}", c.chains).contains("u:p"));
}

#[test]
fn bad_groups_and_chains_name_the_entry() {
    for (text, key) in [
        ("[dcs]\n2 = [\"websocket\"]", "dcs.2[0]"),
        (
            "[dcs]\n2 = [{ addr = \"1.2.3.4:1\", via = \"nope\" }]",
            "dcs.2[0]",
        ),
        ("[dcs]\n2 = [\"1.2.3.4:1\", \"1.2.3.4:1\"]", "dcs.2[1]"),
        (
            "[upstream.chains]\ndirect = [\"socks5://1.2.3.4:1\"]",
            "upstream.chains.direct",
        ),
        (
            "[upstream.chains]\n\"a b\" = [\"socks5://1.2.3.4:1\"]",
            "upstream.chains.a b",
        ),
        ("[upstream.chains]\neu = []", "upstream.chains.eu"),
        (
            "[upstream.chains]\neu = [\"http://1.2.3.4:1\"]",
            "upstream.chains.eu[0]",
        ),
    ] {
        let e = err(text);
        assert!(e.starts_with(key), "{text}: {e}");
    }
}

#[test]
fn retry_passes_and_back_off() {
    let c = Config::from_toml("", &Overrides::default()).unwrap();
    assert_eq!(c.retry, crate::upstream::Retry::default());
    let c = Config::from_toml(
        "[upstream]\nretries = 3\nretry_backoff = \"50ms\"",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!((c.retry.passes, c.retry.backoff.as_millis()), (3, 50));
    assert!(err("[upstream]\nretries = 6").starts_with("upstream.retries"));
    assert!(err("[upstream]\nretry_backoff = \"1ms\"").starts_with("upstream.retry_backoff"));
    assert!(err("[upstream]\nretry_backoff = \"9s\"").starts_with("upstream.retry_backoff"));
}

#[test]
fn the_site_from_flags_names_the_links() {
    let dir = tempfile::tempdir().unwrap();
    let ov = Overrides {
        site_hosts: vec!["Proxy.Example.net".into()],
        site_dir: Some(dir.path().display().to_string()),
        ..Default::default()
    };
    let c = Config::from_toml("", &ov).unwrap();
    assert_eq!(c.site.hosts, vec!["proxy.example.net".to_string()]);
    assert_eq!(c.domains, c.site.hosts, "FakeTLS names the site");
    assert_eq!(c.public_host.as_deref(), Some("proxy.example.net"));
    assert!(err("[site]\nhosts = [\"a.test\"]\ndir = \"/nonexistent\"").starts_with("site.dir"));
    assert!(
        err("[site]\nhosts = [\"a.test\"]\nupstream = \"ftp://x\"").starts_with("site.upstream")
    );
    assert!(err("[site]\nhosts = [\"a.test\"]\ncert = \"/x\"").starts_with("site.cert"));
    assert!(err("[site]\ndir = \"/tmp\"").starts_with("site.hosts"));
    assert!(err("[site]\nhosts = [\"bad host\"]").starts_with("site.hosts[0]"));
}

#[test]
fn a_user_may_hold_several_secrets_with_windows() {
    let text = "[users.a]\nsecret = \"00112233445566778899aabbccddeeff\"\n\
                not_after = \"2027-01-01T00:00:00Z\"\n\
                [[users.a.secrets]]\nsecret = \"dd0f0e0d0c0b0a09080706050403020100\"\n\
                not_before = \"2026-12-01T00:00:00+01:00\"\n\
                [users.b]\n[[users.b.secrets]]\nsecret = \"ffeeddccbbaa99887766554433221100\"\n";
    let c = Config::from_toml(text, &Overrides::default()).expect("valid");
    let a = &c.users[0];
    assert_eq!(a.secrets.len(), 2);
    assert_eq!(
        (a.secrets[0].valid.not_before, a.secrets[0].valid.not_after),
        (0, 1_798_761_600)
    );
    assert_eq!(
        (a.secrets[1].valid.not_before, a.secrets[1].valid.not_after),
        (1_796_079_600, u64::MAX)
    );
    // Links name the newest secret in force, else the next to start.
    assert_eq!(a.secret_at(1_700_000_000).key, a.secrets[0].key);
    assert_eq!(a.secret_at(1_797_000_000).key, a.secrets[1].key);
    assert_eq!(a.secret_at(1_900_000_000).key, a.secrets[1].key);
    assert_ne!(a.secrets[0].id(), a.secrets[1].id());
    assert_eq!(a.secrets[0].id().len(), 8);
    assert_eq!(c.users[1].secrets.len(), 1, "secrets alone are enough");

    let k1 = "secret = \"00112233445566778899aabbccddeeff\"";
    for (text, says) in [
        ("[users.a]\nmodes = [\"dd\"]", "users.a.secret: a secret is required"),
        (
            &format!("[users.a]\n{k1}\nnot_before = \"2027-01-02T00:00:00Z\"\nnot_after = \"2027-01-01T00:00:00Z\""),
            "users.a.not_after: is before not_before",
        ),
        (
            &format!("[users.a]\n{k1}\nnot_after = \"tomorrow\""),
            "users.a.not_after: \"tomorrow\" is not an RFC 3339 time",
        ),
        (
            &format!("[users.a]\n{k1}\n[[users.a.secrets]]\n{k1}"),
            "one user names it twice",
        ),
        (
            "[users.a]\nnot_after = \"2027-01-01T00:00:00Z\"\n[[users.a.secrets]]\nsecret = \"00112233445566778899aabbccddeeff\"",
            "users.a.not_before: a window needs `secret`",
        ),
        (
            "[users.a]\n[[users.a.secrets]]\nsecret = \"zz\"",
            "users.a.secrets[0].secret",
        ),
    ] {
        let e = err(text);
        assert!(e.contains(says), "{text}\n→ {e}\nshould say {says}");
    }
}
