use super::*;

fn addrs(n: u8) -> Vec<Target> {
    (1..=n)
        .map(|i| Target::Addr(SocketAddr::from(([10, 0, 0, i], 443))))
        .collect()
}

fn client(i: u32) -> IpAddr {
    IpAddr::from((0xcb00_7100u32 + i).to_be_bytes())
}

fn firsts(b: &Balancer, t: &[Target], n: u32) -> HashMap<Target, u32> {
    let mut m = HashMap::new();
    for i in 0..n {
        *m.entry(b.order(t, IpPreference::V4, client(i))[0].clone())
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
    cfg.weights.insert(t[2].clone(), 2);
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
        let first = b.order(&t, IpPreference::V4, client(i))[0].clone();
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
    let _held: Vec<_> = [0, 0, 0, 1]
        .iter()
        .map(|&i| b.lease(&t[i]).unwrap())
        .collect();
    assert_eq!(b.order(&t, IpPreference::V4, client(0))[0], t[2]);
    let mut leases = Vec::new();
    for _ in 0..3 {
        let first = b.order(&t, IpPreference::V4, client(0))[0].clone();
        leases.push(b.lease(&first).unwrap());
    }
    // Now 3, 2, 2 (or so): t[0] is never chosen while others have fewer.
    let first = b.order(&t, IpPreference::V4, client(0))[0].clone();
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
    assert_eq!(b.record(&t[0], false), Change::None);
    assert_eq!(b.record(&t[0], false), Change::None);
    assert_eq!(
        b.record(&t[0], false),
        Change::Ejected(Duration::from_millis(80))
    );
    assert!(matches!(b.status(&t[0]), Status::Ejected(_)));
    assert_eq!(b.ejected(), vec![t[0].clone()]);
    // While ejected it comes last, whatever the strategy says.
    for i in 0..10 {
        assert_eq!(
            b.order(&t, IpPreference::V4, client(i)),
            vec![t[1].clone(), t[0].clone()]
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    // Past the cooldown: one trial, first; the next connection keeps away.
    assert_eq!(b.order(&t, IpPreference::V4, client(0))[0], t[0]);
    assert_eq!(b.order(&t, IpPreference::V4, client(0))[0], t[1]);
    // The trial fails: out again, for twice as long.
    assert_eq!(
        b.record(&t[0], false),
        Change::Ejected(Duration::from_millis(160))
    );
    // A success (an active check, or a trial) restores it.
    assert_eq!(b.restore(&t[0]), Change::Restored);
    assert_eq!(b.status(&t[0]), Status::InService);
    assert!(b.ejected().is_empty());
    assert_eq!(b.record(&t[0], true), Change::None);
}

#[test]
fn a_reload_keeps_known_targets_state_and_forgets_gone_ones() {
    let t = addrs(3);
    let b = Balancer::new(BalanceConfig::default(), t.clone());
    for _ in 0..3 {
        b.record(&t[0], false);
    }
    assert_eq!(b.ejected(), vec![t[0].clone()]);
    b.reconfigure(BalanceConfig::default(), vec![t[0].clone(), t[1].clone()]);
    assert_eq!(b.ejected(), vec![t[0].clone()], "state kept");
    assert!(b.lease(&t[2]).is_none(), "a gone target is forgotten");
}

#[test]
fn the_preferred_family_comes_first() {
    let v4 = Target::Addr(SocketAddr::from(([10, 0, 0, 1], 443)));
    let v6 = Target::Addr("[2001:db8::1]:443".parse().unwrap());
    let both = [v4.clone(), v6.clone()];
    let b = Balancer::new(with(Strategy::RoundRobin), both.clone());
    for _ in 0..4 {
        assert_eq!(
            b.order(&both, IpPreference::V6, client(0)),
            vec![v6.clone(), v4.clone()]
        );
        assert_eq!(
            b.order(&both, IpPreference::V4, client(0)),
            vec![v4.clone(), v6.clone()]
        );
    }
}

/// One group of mixed kinds: an address, the same address through a SOCKS5
/// chain, the DC's WebSocket endpoint; weighted round-robin spreads over
/// all three, and each kind has a breaker of its own.
#[test]
fn a_group_of_mixed_kinds_is_balanced_as_one() {
    let addr = SocketAddr::from(([10, 0, 0, 1], 443));
    let v6 = Target::Addr("[2001:db8::1]:443".parse().unwrap());
    let t = vec![
        Target::Addr(addr),
        Target::Via {
            addr,
            chain: "eu".into(),
        },
        Target::WebSocket { dc: 2 },
    ];
    let mut cfg = with(Strategy::RoundRobin);
    cfg.weights.insert(t[1].clone(), 2);
    cfg.weights.insert(t[2].clone(), 3);
    let b = Balancer::new(cfg, t.iter().cloned().chain([v6.clone()]));
    let m = firsts(&b, &t, 6000);
    assert_eq!((m[&t[0]], m[&t[1]], m[&t[2]]), (1000, 2000, 3000));
    // The WebSocket endpoint counts as of the preferred family.
    let mut with_v6 = t.clone();
    with_v6.insert(0, v6.clone());
    assert_eq!(
        b.order(&with_v6, IpPreference::V4, client(0)).last(),
        Some(&v6)
    );
    // The SOCKS5 way fails and is taken out; the plain address is not.
    for _ in 0..3 {
        b.record(&t[1], false);
    }
    assert_eq!(b.ejected(), vec![t[1].clone()]);
    assert_eq!(b.status(&t[0]), Status::InService);
    for i in 0..10 {
        assert_eq!(b.order(&t, IpPreference::V4, client(i))[2], t[1]);
    }
}
