//! The performance issue's targets, evaluated as ratios within one run: each
//! subject against the plain relay of the same round, the median of the
//! per-round ratios, PASS/FAIL against the bars (see docs/BENCHMARKS.md).

use crate::report::{fmt_pair, BulkResult, HandshakeResult, LatencyResult, Report, Target};

fn ratio_target(
    name: &str,
    measured: String,
    goal: String,
    ratio: Option<f64>,
    ok: impl Fn(f64) -> bool,
) -> Target {
    Target {
        name: name.into(),
        measured,
        goal,
        ratio,
        round_ratios: Vec::new(),
        pass: ratio.map(ok),
    }
}

/// Per-round ratios `f(s[i], r[i])` when both sides have the same rounds (more
/// than one), skipping rounds where either value is missing.
fn round_ratios(s: &[Option<f64>], r: &[Option<f64>], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    if s.len() != r.len() || s.len() < 2 {
        return Vec::new();
    }
    s.iter()
        .zip(r)
        .filter_map(|(a, b)| Some(f((*a)?, (*b)?)))
        .filter(|x| x.is_finite())
        .collect()
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Replaces `t.ratio` by the median of `rr` when there are per-round ratios.
fn with_rounds(mut t: Target, rr: Vec<f64>, ok: impl Fn(f64) -> bool) -> Target {
    if let Some(m) = median(&rr) {
        t.ratio = Some(m);
        t.pass = Some(ok(m));
        t.round_ratios = rr;
    }
    t
}

fn somes(v: &[f64]) -> Vec<Option<f64>> {
    v.iter().map(|x| Some(*x)).collect()
}

impl Report {
    fn bulk_of(&self, target: &str, conns: usize) -> Option<&BulkResult> {
        self.bulk
            .iter()
            .find(|b| b.target == target && b.conns == conns)
    }
    fn hs_of(&self, target: &str) -> Option<&HandshakeResult> {
        self.handshakes.iter().find(|h| h.target == target)
    }
    pub(crate) fn lat_of(&self, target: &str) -> Option<&LatencyResult> {
        self.latency.iter().find(|l| l.target == target)
    }

    /// Evaluates the targets for `subject` (e.g. `mtgate ee`) against the relay.
    pub fn evaluate(&mut self, subject: &str) {
        let mut t = Vec::new();
        let relay = "relay";
        let (s16, r16) = (self.bulk_of(subject, 16), self.bulk_of(relay, 16));
        let r = s16.zip(r16).map(|(s, r)| s.mb_per_s / r.mb_per_s);
        let rr = s16.zip(r16).map_or(Vec::new(), |(s, r)| {
            round_ratios(&somes(&s.rounds), &somes(&r.rounds), |a, b| a / b)
        });
        t.push(with_rounds(
            ratio_target(
                &format!("{subject} bulk, 16 conns ≥ 0.85× relay"),
                fmt_pair(s16.map(|b| b.mb_per_s), r16.map(|b| b.mb_per_s), "MB/s"),
                "≥ 0.85×".into(),
                r,
                |x| x >= 0.85,
            ),
            rr,
            |x| x >= 0.85,
        ));
        let floor = r16
            .and_then(|r| r.proxy_cpu_s_per_gb)
            .zip(self.aes_ctr_gb_per_s)
            .map(|(relay_cpu, aes)| relay_cpu + 2.0 / aes);
        let cpu = s16.and_then(|s| s.proxy_cpu_s_per_gb);
        let aes_pass = self.aes_ctr_gb_per_s.map_or(f64::NAN, |a| 2.0 / a);
        let rr = s16.zip(r16).map_or(Vec::new(), |(s, r)| {
            round_ratios(&s.rounds_cpu_s_per_gb, &r.rounds_cpu_s_per_gb, |c, rc| {
                c / (rc + aes_pass)
            })
        });
        t.push(with_rounds(
            ratio_target(
                &format!("{subject} CPU/GB ≤ 1.15× (relay CPU/GB + 2 AES passes)"),
                fmt_pair(cpu, floor, "s/GB"),
                "≤ 1.15×".into(),
                cpu.zip(floor).map(|(c, f)| c / f),
                |x| x <= 1.15,
            ),
            rr,
            |x| x <= 1.15,
        ));
        let (hs, hr) = (self.hs_of(subject), self.hs_of(relay));
        let rr = hs.zip(hr).map_or(Vec::new(), |(s, r)| {
            round_ratios(&somes(&s.rounds), &somes(&r.rounds), |a, b| a / b)
        });
        t.push(with_rounds(
            ratio_target(
                &format!("{subject} handshakes/s ≥ 0.8× relay connections/s"),
                fmt_pair(hs.map(|h| h.per_s), hr.map(|h| h.per_s), "/s"),
                "≥ 0.80×".into(),
                hs.zip(hr).map(|(s, r)| s.per_s / r.per_s),
                |x| x >= 0.8,
            ),
            rr,
            |x| x >= 0.8,
        ));
        let (ls, lr) = (self.lat_of(subject), self.relay_lat_with(subject));
        let rr = ls.zip(lr).map_or(Vec::new(), |(s, r)| {
            round_ratios(&somes(&s.rounds), &somes(&r.rounds), |a, b| a / b)
        });
        t.push(with_rounds(
            ratio_target(
                &format!("{subject} p99 latency ≤ 1.1× relay p99"),
                fmt_pair(ls.map(|l| l.p99_us), lr.map(|l| l.p99_us), "µs"),
                "≤ 1.10×".into(),
                ls.zip(lr).map(|(s, r)| s.p99_us / r.p99_us),
                |x| x <= 1.1,
            ),
            rr,
            |x| x <= 1.1,
        ));
        let idle = self.idle.as_ref().map(|i| i.rss_per_conn);
        t.push(Target {
            name: format!("{subject} RSS per idle authenticated connection ≤ 4 KiB"),
            measured: idle.map_or("n/a".into(), |b| format!("{b:.0} B")),
            goal: "≤ 4096 B".into(),
            ratio: idle.map(|b| b / 4096.0),
            round_ratios: Vec::new(),
            pass: idle.map(|b| b <= 4096.0),
        });
        if let Some(l) = &self.leak {
            let grew = l.rss_after.saturating_sub(l.rss_before);
            t.push(Target {
                name: format!(
                    "{subject} memory back to baseline after {} connections",
                    l.cycles
                ),
                measured: format!(
                    "{:.1} → {:.1} MiB",
                    l.rss_before as f64 / 1048576.0,
                    l.rss_after as f64 / 1048576.0
                ),
                goal: format!("growth ≤ {:.1} MiB", l.allowance() as f64 / 1048576.0),
                ratio: Some(grew as f64 / l.allowance() as f64),
                round_ratios: Vec::new(),
                pass: Some(grew <= l.allowance()),
            });
        }
        if let Some(sc) = &self.scaling {
            let b = sc
                .bulk_2
                .as_ref()
                .zip(sc.bulk_1.as_ref())
                .map(|(b2, b1)| b2.mb_per_s / b1.mb_per_s);
            let n = sc.workers.max(2);
            // The bar: 16 workers give ≥ 10× one on a 16-core machine
            // (scaled to other sizes); with fewer cores, any gain.
            let (bar, bar_text) = if n >= 16 {
                (
                    10.0 * n as f64 / 16.0,
                    format!("≥ {:.1}×", 10.0 * n as f64 / 16.0),
                )
            } else {
                (1.0, "> 1.0× (any gain)".to_string())
            };
            t.push(ratio_target(
                &format!("{subject} bulk, {n} workers vs 1"),
                fmt_pair(
                    sc.bulk_2.as_ref().map(|x| x.mb_per_s),
                    sc.bulk_1.as_ref().map(|x| x.mb_per_s),
                    "MB/s",
                ),
                bar_text,
                b,
                |x| x >= bar && x > 1.0,
            ));
            // Throughput per proxy CPU-second, N workers against 1: whether the
            // proxy scales linearly in the cores it gets (on one machine the load
            // generator and echo DC take cores the proxy then cannot have).
            let per_cpu = |b: &BulkResult| b.proxy_cpu_util.map(|u| b.mb_per_s / u.max(1e-9));
            let eff = sc
                .bulk_2
                .as_ref()
                .and_then(per_cpu)
                .zip(sc.bulk_1.as_ref().and_then(per_cpu))
                .map(|(a, b)| a / b);
            t.push(ratio_target(
                &format!("{subject} bulk per proxy CPU, {n} workers vs 1"),
                fmt_pair(
                    sc.bulk_2.as_ref().and_then(per_cpu),
                    sc.bulk_1.as_ref().and_then(per_cpu),
                    "MB/s per CPU",
                ),
                "≥ 0.80× (linear in its cores)".into(),
                eff,
                |x| x >= 0.8,
            ));
            let h = sc
                .handshakes_2
                .as_ref()
                .zip(sc.handshakes_1.as_ref())
                .map(|(h2, h1)| h2.per_s / h1.per_s);
            t.push(ratio_target(
                &format!("{subject} handshakes, {n} workers vs 1"),
                fmt_pair(
                    sc.handshakes_2.as_ref().map(|x| x.per_s),
                    sc.handshakes_1.as_ref().map(|x| x.per_s),
                    "/s",
                ),
                "> 1.0× (any gain)".into(),
                h,
                |x| x > 1.0,
            ));
        }
        self.targets = t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_round_ratios() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        let s = [Some(2.0), None, Some(9.0)];
        let r = [Some(4.0), Some(1.0), Some(3.0)];
        assert_eq!(round_ratios(&s, &r, |a, b| a / b), vec![0.5, 3.0]);
        assert!(round_ratios(&s[..1], &r[..1], |a, b| a / b).is_empty());
    }
}
