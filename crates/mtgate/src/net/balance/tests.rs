use super::*;

fn addrs(n: u8) -> Vec<SocketAddr> {
    (1..=n)
        .map(|i| SocketAddr::from(([10, 0, 0, i], 443)))
        .collect()
}

fn client(i: u32) -> IpAddr {
    IpAddr::from((0xcb00_7100u32 + i).to_be_bytes())
}

fn firsts(b: &Balancer, t: &[SocketAddr], n: u32) -> HashMap<SocketAddr, u32> {
    let mut m = HashMap::new();
    for i in 0..n {
        *m.entry(b.order(t, IpPreference::V4, client(i))[0])
            .or_default() += 1;
    }
    m
}

fn with(strategy: Strategy) -> BalanceConfig {
    BalanceConfig {
        strategy,
        ..BalanceConfig::default()
    }
}

#[test]
fn failover_keeps_the_listed_order() {
    let t = addrs(3);
    let b = Balancer::new(with(Strategy::Failover), t.clone());
    assert_eq!(b.order(&t, IpPreference::V4, client(1)), t);
}

#[test]
fn round_robin_spreads_by_weight() {
    let t = addrs(3);
    let mut cfg = with(Strategy::RoundRobin);
    cfg.weights.insert(t[2], 2);
    let b = Balancer::new(cfg, t.clone());
    let m = firsts(&b, &t, 4000);
    assert_eq!(m[&t[0]], 1000);
    assert_eq!(m[&t[1]], 1000);
    assert_eq!(m[&t[2]], 2000);
    // Every order holds every target once.
    let mut o = b.order(&t, IpPreference::V4, client(0));
    o.sort();
    assert_eq!(o, t);
}

#[test]
fn client_hash_keeps_a_client_on_its_target_and_spreads_clients() {
    let t = addrs(4);
    let b = Balancer::new(with(Strategy::ClientHash), t.clone());
    for i in 0..50 {
        let first = b.order(&t, IpPreference::V4, client(i))[0];
        for _ in 0..5 {
            assert_eq!(b.order(&t, IpPreference::V4, client(i))[0], first);
        }
    }
    let m = firsts(&b, &t, 4000);
    for a in &t {
        let n = m.get(a).copied().unwrap_or(0);
        assert!((700..=1300).contains(&n), "{a}: {n} of 4000: {m:?}");
    }
}

#[test]
fn least_connections_fills_the_emptiest_target() {
    let t = addrs(3);
    let b = Balancer::new(with(Strategy::LeastConnections), t.clone());
    // Three connections stay open on t[0], one on t[1].
    let _held: Vec<_> = [t[0], t[0], t[0], t[1]]
        .iter()
        .map(|a| b.lease(*a).unwrap())
        .collect();
    assert_eq!(b.order(&t, IpPreference::V4, client(0))[0], t[2]);
    let mut leases = Vec::new();
    for _ in 0..3 {
        let first = b.order(&t, IpPreference::V4, client(0))[0];
        leases.push(b.lease(first).unwrap());
    }
    // Now 3, 2, 2 (or so): t[0] is never chosen while others have fewer.
    let first = b.order(&t, IpPreference::V4, client(0))[0];
    assert_ne!(first, t[0]);
    drop(leases);
}

#[test]
fn failures_eject_a_target_and_a_success_brings_it_back() {
    let t = addrs(2);
    let mut cfg = with(Strategy::RoundRobin);
    cfg.cooldown = Duration::from_millis(80);
    cfg.max_cooldown = Duration::from_millis(1000);
    let b = Balancer::new(cfg, t.clone());
    assert_eq!(b.record(t[0], false), Change::None);
    assert_eq!(b.record(t[0], false), Change::None);
    assert_eq!(
        b.record(t[0], false),
        Change::Ejected(Duration::from_millis(80))
    );
    assert!(matches!(b.status(t[0]), Status::Ejected(_)));
    assert_eq!(b.ejected(), vec![t[0]]);
    // While ejected it comes last, whatever the strategy says.
    for i in 0..10 {
        assert_eq!(b.order(&t, IpPreference::V4, client(i)), vec![t[1], t[0]]);
    }
    std::thread::sleep(Duration::from_millis(100));
    // Past the cooldown: one trial, first; the next connection keeps away.
    assert_eq!(b.order(&t, IpPreference::V4, client(0))[0], t[0]);
    assert_eq!(b.order(&t, IpPreference::V4, client(0))[0], t[1]);
    // The trial fails: out again, for twice as long.
    assert_eq!(
        b.record(t[0], false),
        Change::Ejected(Duration::from_millis(160))
    );
    // A success (an active check, or a trial) restores it.
    assert_eq!(b.restore(t[0]), Change::Restored);
    assert_eq!(b.status(t[0]), Status::InService);
    assert!(b.ejected().is_empty());
    assert_eq!(b.record(t[0], true), Change::None);
}

#[test]
fn a_reload_keeps_known_targets_state_and_forgets_gone_ones() {
    let t = addrs(3);
    let b = Balancer::new(BalanceConfig::default(), t.clone());
    for _ in 0..3 {
        b.record(t[0], false);
    }
    assert_eq!(b.ejected(), vec![t[0]]);
    b.reconfigure(BalanceConfig::default(), vec![t[0], t[1]]);
    assert_eq!(b.ejected(), vec![t[0]], "state kept");
    assert!(b.lease(t[2]).is_none(), "a gone target is forgotten");
}

#[test]
fn the_preferred_family_comes_first() {
    let v4 = SocketAddr::from(([10, 0, 0, 1], 443));
    let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    let b = Balancer::new(with(Strategy::RoundRobin), [v4, v6]);
    for _ in 0..4 {
        assert_eq!(
            b.order(&[v4, v6], IpPreference::V6, client(0)),
            vec![v6, v4]
        );
        assert_eq!(
            b.order(&[v4, v6], IpPreference::V4, client(0)),
            vec![v4, v6]
        );
    }
}
