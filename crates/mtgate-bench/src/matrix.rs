//! The side-by-side matrix: bulk (per connection count), latency and
//! handshakes, for the relay and every subject, repeated in rounds.
//!
//! Within a round the targets run back to back (relay first), so slow drift
//! on a shared machine hits all of them alike; over several rounds each cell
//! reports its median round (by MB/s, p99 or cycles per second) and keeps the
//! value of every round in `rounds`, so the spread is visible in the JSON.

use crate::client::{Mode, Target};
use crate::load::{self, BulkOpts, LatencyOpts};
use crate::report::{BulkResult, HandshakeResult, LatencyResult};
use crate::suite::step;
use std::time::Duration;

/// Handshake-test settings.
#[derive(Clone, Copy, Debug)]
pub struct HandshakeOpts {
    pub concurrency: usize,
    pub secs: Duration,
    pub max: u64,
}

/// What to run; `None` parts are skipped.
pub struct Matrix<'a> {
    /// (target, pid of the process behind it), relay first.
    pub targets: &'a [(Target, Option<u32>)],
    pub conns: &'a [usize],
    pub bulk: Option<BulkOpts>,
    pub latency: Option<LatencyOpts>,
    pub handshakes: Option<HandshakeOpts>,
    /// Handshakes for every target (else only the relay and `ee` ones).
    pub all_modes_handshake: bool,
    pub rounds: usize,
}

/// Results of one cell over the rounds, in first-seen order.
struct Cells<T> {
    cells: Vec<(String, Vec<T>)>,
}

impl<T: Clone> Cells<T> {
    fn new() -> Self {
        Cells { cells: Vec::new() }
    }
    fn push(&mut self, key: String, v: T) {
        match self.cells.iter_mut().find(|(k, _)| *k == key) {
            Some((_, vs)) => vs.push(v),
            None => self.cells.push((key, vec![v])),
        }
    }
    /// The median round of each cell by `metric`; `set_rounds` records what
    /// every round measured into it.
    fn medians(self, metric: impl Fn(&T) -> f64, set_rounds: impl Fn(&mut T, &[T])) -> Vec<T> {
        self.cells
            .into_iter()
            .map(|(_, vs)| {
                let all: Vec<f64> = vs.iter().map(&metric).collect();
                let mut order: Vec<usize> = (0..vs.len()).collect();
                order.sort_by(|&a, &b| all[a].total_cmp(&all[b]));
                let mut m = vs[order[(order.len() - 1) / 2]].clone();
                set_rounds(&mut m, &vs);
                m
            })
            .collect()
    }
}

impl Matrix<'_> {
    pub async fn run(
        &self,
        errors: &mut Vec<String>,
    ) -> (Vec<BulkResult>, Vec<LatencyResult>, Vec<HandshakeResult>) {
        let (mut bulk, mut lat, mut hs) = (Cells::new(), Cells::new(), Cells::new());
        for round in 1..=self.rounds {
            let r = if self.rounds > 1 {
                format!(" (round {round}/{})", self.rounds)
            } else {
                String::new()
            };
            if let Some(b) = self.bulk {
                for &conns in self.conns {
                    for (t, pid) in self.targets {
                        let o = BulkOpts { conns, ..b };
                        let limit = o.warmup + o.duration + Duration::from_secs(60);
                        let what = format!("bulk {} × {conns}{r}", t.label);
                        if let Some(b) = step(errors, &what, limit, load::bulk(t, *pid, o)).await {
                            eprintln!(
                                "[bench]   {:.1} MB/s, proxy CPU {:.2}, {:.3} CPU-s/GB",
                                b.mb_per_s,
                                b.proxy_cpu_util.unwrap_or(f64::NAN),
                                b.proxy_cpu_s_per_gb.unwrap_or(f64::NAN)
                            );
                            bulk.push(format!("{}/{conns}", t.label), b);
                        }
                    }
                }
            }
            if let Some(o) = self.latency {
                // Each subject runs at the same time as the relay, so both see
                // the same machine (a shared machine's noise moves p99 a lot).
                let relay = self.targets.iter().find(|(t, _)| t.mode == Mode::Relay);
                let subjects = self.targets.iter().filter(|(t, _)| t.mode != Mode::Relay);
                let limit = o.warmup + o.duration + Duration::from_secs(60);
                for (t, pid) in subjects {
                    let what = format!("latency {} alongside the relay{r}", t.label);
                    let pair = async {
                        match relay {
                            Some((rt, rpid)) => {
                                let (a, b) = tokio::join!(
                                    load::latency(t, *pid, o),
                                    load::latency(rt, *rpid, o)
                                );
                                Ok((a?, Some(b?)))
                            }
                            None => Ok((load::latency(t, *pid, o).await?, None)),
                        }
                    };
                    if let Some((mut l, base)) = step(errors, &what, limit, pair).await {
                        if let Some(mut b) = base {
                            eprintln!(
                                "[bench]   p50 {:.1} µs, p99 {:.1} µs (relay {:.1}, {:.1})",
                                l.p50_us, l.p99_us, b.p50_us, b.p99_us
                            );
                            b.paired_with = Some(t.label.clone());
                            l.paired_with = Some(b.target.clone());
                            lat.push(format!("relay/{}", t.label), b);
                        }
                        lat.push(t.label.clone(), l);
                    }
                }
            }
            if let Some(o) = self.handshakes {
                let which = self.targets.iter().filter(|(t, _)| {
                    self.all_modes_handshake || matches!(t.mode, Mode::Relay | Mode::Ee)
                });
                for (t, pid) in which {
                    let what = format!("handshakes {}{r}", t.label);
                    let limit = o.secs + Duration::from_secs(60);
                    let f = load::handshakes(t, *pid, o.concurrency, o.secs, o.max);
                    if let Some(h) = step(errors, &what, limit, f).await {
                        eprintln!("[bench]   {:.0}/s ({} errors)", h.per_s, h.errors);
                        hs.push(t.label.clone(), h);
                    }
                }
            }
        }
        (
            bulk.medians(
                |b| b.mb_per_s,
                |b, all| {
                    b.rounds = all.iter().map(|x| x.mb_per_s).collect();
                    b.rounds_cpu_s_per_gb = all.iter().map(|x| x.proxy_cpu_s_per_gb).collect();
                },
            ),
            lat.medians(
                |l| l.p99_us,
                |l, all| l.rounds = all.iter().map(|x| x.p99_us).collect(),
            ),
            hs.medians(
                |h| h.per_s,
                |h, all| h.rounds = all.iter().map(|x| x.per_s).collect(),
            ),
        )
    }
}
