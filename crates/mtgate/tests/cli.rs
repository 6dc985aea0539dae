//! The operator's commands, run as a real process: `run` with no file (secret
//! generated once and kept), `check` on good and bad files, `link` with a PNG
//! QR code, `secret`, and `--help`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mtgate");

/// Starts `mtgate run` and returns its stdout lines up to the QR code, then kills it.
fn run_once(state: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut child = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .args([
            "--public-host",
            "proxy.example.net",
            "--mask-host",
            "127.0.0.1:1",
        ])
        .args(extra)
        .env("HOME", state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mtgate");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Everything is printed at once after start: stop at the QR code, or after a quiet second.
    loop {
        let wait = if lines.is_empty() {
            deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(1)
        };
        match rx.recv_timeout(wait) {
            Ok(Ok(line)) => {
                let qr = line.contains('█');
                lines.push(line);
                if qr {
                    break;
                }
            }
            _ => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn run_without_a_file_generates_one_secret_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = run_once(dir.path(), &[]);
    assert!(first[0].starts_with("LISTENING 127.0.0.1:"), "{first:?}");
    // The first screen's block: what listens, where the secret is, what is fronted.
    let has = |lines: &[String], want: &str| lines.iter().any(|l| l.starts_with(want));
    let secret_path = dir.path().join("secret");
    for want in [
        "CONNECTIONS at most ".to_string(),
        "mtgate ".to_string(),
        "  clients  127.0.0.1:".to_string(),
        "  admin    http://127.0.0.1:9090  metrics /metrics, health /health/live".to_string(),
        format!("  secret   {} (generated now", secret_path.display()),
        "  fronting 127.0.0.1:1 for www.google.com: a connection whose handshake fails".to_string(),
    ] {
        assert!(
            has(&first, &want),
            "`{want}` in the first screen: {first:#?}"
        );
    }
    let links: Vec<&String> = first
        .iter()
        .filter(|l| l.contains("proxy?server=proxy.example.net"))
        .collect();
    assert_eq!(
        links.len(),
        2,
        "one tg:// and one t.me link for the default ee-only user: {first:?}"
    );
    assert!(links[0].trim().starts_with("tg://proxy?") && links[0].contains("secret=ee"));
    assert!(links[1].trim().starts_with("https://t.me/proxy?"));
    assert!(first.iter().any(|l| l.contains('█')), "a QR code is drawn");
    let secret = std::fs::read_to_string(dir.path().join("secret")).unwrap();
    assert_eq!(secret.trim().len(), 32);
    assert!(
        links[0].contains(secret.trim()),
        "the link carries the stored key"
    );
    // Second start: same secret.
    let second = run_once(dir.path(), &[]);
    assert!(
        has(
            &second,
            &format!(
                "  secret   {} (generated at the first start",
                secret_path.display()
            )
        ),
        "{second:#?}"
    );
    let again: Vec<&String> = second.iter().filter(|l| l.contains("tg://proxy")).collect();
    let port = |l: &str| {
        l.split("port=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        again[0].replace(&port(again[0]), "P"),
        links[0].replace(&port(links[0]), "P")
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secret")).unwrap(),
        secret
    );
}

/// Issue 17: `mtgate link` without the flags `run` was given prints the
/// links of the proxy as it runs (its bound port, its public host), read
/// from the state directory; with nothing running it says what it assumed.
#[test]
fn link_prints_the_port_the_proxy_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--no-qr", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.path())
        .args([
            "--public-host",
            "proxy.example.net",
            "--mask-host",
            "127.0.0.1:1",
        ])
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mtgate");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = loop {
        let l = lines.next().expect("a line").expect("utf-8");
        if let Some(a) = l.strip_prefix("LISTENING ") {
            break a.parse::<std::net::SocketAddr>().unwrap().port();
        }
    };
    assert_ne!(port, 443);
    let t0 = Instant::now();
    while !dir.path().join("running.json").exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = Command::new(BIN)
        .args(["link", "--no-qr", "--state-dir"])
        .arg(dir.path())
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("server=proxy.example.net&port={port}&")),
        "link prints the running port {port}: {out}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("(pid {})", child.id())));
    let _ = child.kill();
    let _ = child.wait();
    // Nothing running (the record's process is gone): the assumption is said.
    let o = Command::new(BIN)
        .args(["link", "--no-qr", "--state-dir"])
        .arg(dir.path())
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no running mtgate recorded") && err.contains("port 443 assumed"),
        "{err}"
    );
}

#[test]
fn run_takes_the_essentials_as_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_once(
        dir.path(),
        &[
            "--secret",
            "bob=00112233445566778899aabbccddeeff",
            "--modes",
            "dd,classic",
            "--dc",
            "2=127.0.0.1:1",
            "--no-qr",
        ],
    );
    let all = out.join("\n");
    assert!(all.contains("user bob:"), "{all}");
    assert!(all.contains("secret=dd00112233445566778899aabbccddeeff"));
    assert!(all.contains("secret=00112233445566778899aabbccddeeff"));
    assert!(
        !dir.path().join("secret").exists(),
        "no generated secret when users are given"
    );
}

#[test]
fn check_accepts_good_files_and_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[server]\nlisten = [\"127.0.0.1:8443\"]\n[users.a]\nsecret = \"00112233445566778899aabbccddeeff\"\n").unwrap();
    let o = Command::new(BIN)
        .args(["check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("ok"));
    assert!(
        out.contains("policy: per-source limits count only unauthenticated connections (at most 1024 open, 50/s with a burst of 200)"),
        "{out}"
    );
    // The strict scope is accepted, with a warning; a bad scope names its key.
    let strict = dir.path().join("strict.toml");
    std::fs::write(
        &strict,
        "[policy.rate]\nscope = \"all\"\nmax_connections_per_ip = 64\n",
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["check"])
        .arg(&strict)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("WARNING: strict per-address limits") && out.contains("64 connections"),
        "{out}"
    );
    for (text, key) in [
        ("[policy.rate]\nscope = \"everyone\"\n", "policy.rate.scope"),
        ("[server]\nlisten = [\"nowhere\"]\n", "server.listen[0]"),
        ("[server]\nlisten_on = 1\n", "listen_on"),
        ("[users.a]\nsecret = \"123\"\n", "users.a.secret"),
        ("[tls]\nmask_host = \"no port\"\n", "tls.mask_host"),
        ("not toml at all [", "config"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let o = Command::new(BIN)
            .args(["check"])
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{text} must be refused");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(key),
            "error for {text:?} should name {key}: {err}"
        );
        assert!(!err.contains("panicked"));
    }
    let o = Command::new(BIN)
        .args(["check", "/nonexistent/mtgate.toml"])
        .output()
        .unwrap();
    assert!(!o.status.success());
}

#[test]
fn syntax_and_type_errors_name_file_line_column_and_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        // A bare word where a value belongs (syntax).
        (
            "[tls]\nfronting = maybe\n",
            ":2:12: tls.fronting: invalid string",
        ),
        // A string where a boolean belongs (type).
        (
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[tls]\nfronting = \"yes\"\n",
            ":4:12: tls.fronting: invalid type",
        ),
        // A negative count.
        (
            "[policy.rate]\nburst = -3\n",
            ":2:9: policy.rate.burst: invalid value",
        ),
        // An unclosed table header.
        ("[server\nlisten = []\n", ":1:8: server"),
        // A key given twice.
        (
            "[tls]\nfronting = true\nfronting = false\n",
            ":3:1: tls.fronting: duplicate key",
        ),
    ] {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, text).unwrap();
        let o = Command::new(BIN).args(["check"]).arg(&f).output().unwrap();
        assert!(!o.status.success(), "{text:?} must be refused");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("{}{want}", f.display())),
            "{text:?}: want `{want}` in:\n{err}"
        );
        // The offending line, with a caret under the column.
        let col: usize = want.split(':').nth(2).unwrap().parse().unwrap();
        let line: usize = want.split(':').nth(1).unwrap().parse().unwrap();
        let shown = text.lines().nth(line - 1).unwrap();
        assert!(err.contains(&format!("{line} | {shown}")), "{err}");
        assert!(
            err.contains(&format!("| {}^", " ".repeat(col - 1))),
            "{err}"
        );
        assert!(!err.contains("panicked"));
    }
}

#[test]
fn link_writes_a_png_qr_code_and_secret_prints_every_form() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("alice.png");
    let o = Command::new(BIN)
        .args([
            "link",
            "--secret",
            "alice=00112233445566778899aabbccddeeff",
            "--public-host",
            "p.example",
            "--listen",
            "0.0.0.0:443",
            "--png",
        ])
        .arg(&png)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("https://t.me/proxy?server=p.example&port=443&secret=7gARIjNEVWZ3iJmqu8zd7v93d3cuZ29vZ2xlLmNvbQ"), "{stdout}");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let o = Command::new(BIN)
        .args([
            "link",
            "--secret",
            "alice=00112233445566778899aabbccddeeff",
            "--user",
            "nobody",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());

    let o = Command::new(BIN)
        .args(["secret", "--domain", "www.example.org"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && s.contains("dd") && s.contains("ee (FakeTLS) b64:"),
        "{s}"
    );
    for cmd in [
        &["--help"][..],
        &["run", "--help"],
        &["check", "--help"],
        &["link", "--help"],
        &["secret", "--help"],
    ] {
        let o = Command::new(BIN).args(cmd).output().unwrap();
        assert!(o.status.success() && !o.stdout.is_empty(), "{cmd:?}");
    }
}

/// `mtgate audit`: findings with severities; exit 1 on a high one, 0 on a
/// clean configuration (cron- and CI-friendly).
#[test]
fn audit_reports_findings_and_exits_non_zero_on_a_high_one() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let state = dir.path().display();
    let weak = write(
        "weak.toml",
        format!(
            "[server]\nstate_dir = \"{state}\"\n[admin]\nlisten = \"0.0.0.0:9090\"\n\
             [users.alice]\nsecret = \"00112233445566778899aabbccddeeff\"\nmodes = [\"classic\"]\n"
        ),
    );
    let out = std::process::Command::new(BIN)
        .args(["audit", "--config"])
        .arg(&weak)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("[high] user alice: the secret is weak"),
        "{text}"
    );
    assert!(
        text.contains("[high] the admin listener 0.0.0.0:9090"),
        "{text}"
    );
    assert!(
        text.contains("[medium] user alice: plain obfuscated2"),
        "{text}"
    );
    assert!(
        text.contains("crypto linked in: ") && text.contains("rustls 0."),
        "{text}"
    );
    let clean = write(
        "clean.toml",
        format!(
            "[server]\nstate_dir = \"{state}\"\n\
             [users.alice]\nsecret = \"7d1f0c9a5be24e3186a0f4c2d9b8e617\"\nmodes = [\"ee\"]\n"
        ),
    );
    let out = std::process::Command::new(BIN)
        .args(["audit", "--config"])
        .arg(&clean)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("[high]"), "{text}");
    // Nothing was created in the state directory by auditing.
    assert!(!dir.path().join("secret").exists());
}
