//! Issue 18: a censor probes mtgate from one address, long enough to pass
//! every failure, reputation and rate threshold of the **default**
//! configuration, and compares each answer with the website mtgate fronts,
//! a real nginx on loopback. Every probe must look the same through mtgate
//! as from nginx directly: the bytes (TLS record shapes where a handshake's
//! content is random; HTTP with the `Date` header set aside), how the
//! connection ends (FIN, RST, still open) and when.
//!
//! Only the mask host, the DCs and the listen address differ from the
//! defaults (tests never reach the internet); the per-source limits are the
//! shipped ones. In the default scope (`policy.rate.scope =
//! "unauthenticated"`) the later probes are read as suspects; in the strict
//! scope (`"all"`, run as a second test) they are refused by the policy
//! before a byte is read. Either way each must look like the site. A valid
//! FakeTLS hello replayed from the same and from another address gets the
//! website as well.

mod common;

use common::nginx::Nginx;
use common::prober::*;
use common::*;
use mtgate::policy::PolicyReason;
use mtgate_proto::faketls::build_client_hello;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prober_past_every_threshold_still_sees_the_website() {
    suite(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_the_strict_scope_look_like_the_website_too() {
    suite(true).await;
}

/// A fronted failure is answered as soon as the site answers: the decision
/// does not wait for the pre-connect delay (200 ms), which would be a timing
/// signature every bad request shows. Median over every quick kind, each
/// sent to nginx and through mtgate one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fronted_answers_come_as_soon_as_the_sites() {
    let site = Nginx::start(DOMAIN, SITE_IDLE);
    let proxy = Proxy::start_full(
        "127.0.0.1:0",
        "handshake_timeout = \"10s\"\n",
        &format!(
            "[tls]\ndomains = [\"{DOMAIN}\"]\nmask_host = \"{}\"\n[users.alice]\nsecret = \"{KEY_HEX}\"\n",
            site.addr
        ),
        &["127.0.0.1:1".parse().expect("addr")],
    )
    .await;
    let mut extra = Vec::new();
    for p in quick_kinds().iter().chain(quick_kinds().iter()) {
        let d = probe(site.addr, &p.chunks, p.gap, true, LIMIT).await;
        let f = probe(proxy.addr, &p.chunks, p.gap, true, LIMIT).await;
        assert_eq!((d.end, f.end), (End::Fin, End::Fin), "{}", p.name);
        extra.push(f.after.saturating_sub(d.after));
    }
    extra.sort();
    let median = extra[extra.len() / 2];
    eprintln!(
        "mtgate's extra time over nginx: median {median:?}, max {:?}",
        extra.last()
    );
    assert!(
        median < Duration::from_millis(100),
        "fronted answers lag the site's: median {median:?} ({extra:?})"
    );
}

async fn suite(strict: bool) {
    let site = Nginx::start(DOMAIN, SITE_IDLE);
    let scope = if strict {
        "[policy.rate]\nscope = \"all\"\n"
    } else {
        ""
    };
    // Defaults everywhere but where bytes may go: the mask host and the DCs
    // (a closed loopback port). `handshake_timeout` is set to its default, as
    // the test harness otherwise shortens it.
    let proxy = Proxy::start_full(
        "127.0.0.1:0",
        "handshake_timeout = \"10s\"\n",
        &format!(
            "[tls]\ndomains = [\"{DOMAIN}\"]\nmask_host = \"{}\"\n[users.alice]\nsecret = \"{KEY_HEX}\"\n{scope}",
            site.addr
        ),
        &["127.0.0.1:1".parse().expect("addr")],
    )
    .await;
    let prober: IpAddr = "127.0.0.1".parse().expect("ip");
    let other: IpAddr = "127.0.0.3".parse().expect("ip");

    // The replay case: a valid FakeTLS hello is served once, then replayed
    // from the same address and from another one: both get the website.
    let valid = build_client_hello(&key(), DOMAIN, unix_now(), &[7; 64], 1800);
    served_by_mtgate(Some(other), proxy.addr, &valid).await;
    let replay = p("replayed valid hello", vec![valid], false, Cmp::Tls);
    let mut errors = run(site.addr, proxy.addr, other, std::slice::from_ref(&replay)).await;
    errors.extend(run(site.addr, proxy.addr, prober, std::slice::from_ref(&replay)).await);
    // (Counted when the session ends, just after the prober saw the end.)
    let replays = || proxy.counters.rejected(mtgate_proto::RejectReason::Replay);
    let t0 = std::time::Instant::now();
    while replays() < 2 && t0.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(replays(), 2, "both replays were refused as replays");

    // 64 probes of every kind in a row from one address: the failures pass
    // the failure and reputation thresholds on the way, and every later probe
    // is read as a suspect (default) or refused by the policy (strict).
    let suspects = || proxy.runtime.policy.stats().ips.suspects;
    errors.extend(run(site.addr, proxy.addr, prober, &series(64)).await);
    let refused_prober = proxy.counters.policy_refused.load(Relaxed);
    let suspect_prober = suspects();
    let prober_blocked = proxy.runtime.policy.ips().blocked_until(prober).is_some();

    // The rate limit (default burst 200). In the strict scope a source is
    // checked against it only while not blocked, so it is passed by
    // connections that arrive faster than their failures are counted: 300 at once from a fresh address, each
    // (half a second later) a garbage line that nginx answers with a 400. More than the per-source
    // fronting budget are open at once here, so some are held (silent, then
    // a FIN when the client closes); none is reset, and every answer is
    // nginx's own.
    let flooder: IpAddr = "127.0.0.2".parse().expect("ip");
    let garbage = b"\x01\x02 not http\r\n\r\n".to_vec();
    let reference = probe(
        site.addr,
        std::slice::from_ref(&garbage),
        Duration::ZERO,
        true,
        LIMIT,
    )
    .await;
    assert!(!reference.bytes.is_empty(), "nginx answers garbage");
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let addr = proxy.addr;
        let g = garbage.clone();
        burst.spawn(async move {
            // Connect at once, speak half a second later: every connection is
            // counted against the rate before any of them fails.
            let chunks = [Vec::new(), g];
            probe_from(
                Some(flooder),
                addr,
                &chunks,
                Duration::from_millis(500),
                true,
                LIMIT,
            )
            .await
        });
    }
    let (mut answered, mut held) = (0, 0);
    while let Some(r) = burst.join_next().await {
        let seen = r.expect("burst task");
        assert_eq!(
            seen.end,
            End::Fin,
            "a burst connection ended {:?}",
            seen.end
        );
        if seen.bytes.is_empty() {
            held += 1;
        } else {
            assert_eq!(strip_date(&seen.bytes), strip_date(&reference.bytes));
            answered += 1;
        }
    }
    eprintln!("burst: {answered} answered by nginx through mtgate, {held} held");
    let suspect_mid = suspects();
    if strict {
        assert!(
            proxy.counters.refused(PolicyReason::RateLimited) > 0,
            "the burst passed the rate limit"
        );
    } else {
        assert!(
            suspect_mid - suspect_prober > 50,
            "the burst passed the rate limit: read as suspects"
        );
    }
    let t0 = std::time::Instant::now();
    while proxy.runtime.mask_budget.stats().open > 0 && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The flooding source, probed one connection at a time, sees the website.
    let refused_mid = proxy.counters.policy_refused.load(Relaxed);
    errors.extend(run(site.addr, proxy.addr, flooder, &series(32)).await);
    let refused_late = proxy.counters.policy_refused.load(Relaxed) - refused_mid;
    let suspect_late = suspects() - suspect_mid;

    let c = &proxy.counters;
    let by = |r| c.refused(r);
    eprintln!(
        "strict {strict}: refusals: rate {} failures {} reputation {} (prober {refused_prober}, \
         flooder's last 32 probes {refused_late}); suspects: prober {suspect_prober}, \
         flooder's last 32 probes {suspect_late}; fronted {}; mask budget {:?}",
        by(PolicyReason::RateLimited),
        by(PolicyReason::TooManyFailures),
        by(PolicyReason::ReputationBlocked),
        c.fronted.load(Relaxed),
        proxy.runtime.mask_budget.stats()
    );
    assert!(
        errors.is_empty(),
        "{} of 98 probes told mtgate from nginx:\n{}",
        errors.len(),
        errors.join("\n")
    );
    assert!(prober_blocked, "the prober passed the reputation threshold");
    if strict {
        assert!(
            refused_prober >= 40,
            "failures got the prober refused: {refused_prober}"
        );
        assert!(
            by(PolicyReason::TooManyFailures) + by(PolicyReason::ReputationBlocked) > 0,
            "the failure or reputation threshold was passed"
        );
        assert!(
            refused_late >= 30,
            "the flooder's probes came from a refused source: {refused_late}"
        );
    } else {
        assert_eq!(
            c.policy_refused.load(Relaxed),
            0,
            "nothing refused by default"
        );
        assert!(
            suspect_prober >= 40,
            "the prober's later probes were read as suspects: {suspect_prober}"
        );
        assert!(
            suspect_late >= 30,
            "the flooder's probes were read as suspects: {suspect_late}"
        );
    }
    // (The first valid hello was answered but never followed by an inner
    // header, so no connection authenticated at all.)
    assert_eq!(c.authenticated.load(Relaxed), 0, "no probe was served");
}
