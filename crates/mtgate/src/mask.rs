//! Fronting (domain fronting / masking): a connection that is not a valid
//! client is handed to the mask host with every byte already read replayed
//! exactly, then spliced both ways until either side closes. A FIN from one
//! side becomes a FIN to the other; a reset becomes a reset (SO_LINGER 0).
//! mtgate never sends a byte of its own to such a client, and no deadline of
//! mtgate's cuts a splice short: the mask site's own timeouts apply.
//!
//! To make the site's idle timeouts apply from (nearly) the first moment, the
//! session may open the mask connection shortly after a client connects
//! ([`MaskLink`], `tls.mask_preconnect_delay`), holding back the client's bytes
//! until the handshake decides. A valid client sends its handshake at once and
//! is decided before the delay ends, so it costs no mask connection; a silent or
//! trickling prober meets the site's own timeouts, shifted by the delay. If the
//! site speaks or closes first, that is mirrored at once.
//!
//! Every mask connection is counted against the fronting budget
//! ([`crate::front`]); a connection past it is held silent instead.

use crate::front::{MaskBudget, MaskPermit};
use crate::net::proxy_protocol::Announce;
use crate::pool::PooledBuf;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Who a mask connection is for, and the budget it counts against.
#[derive(Clone, Debug)]
pub struct Gate {
    pub budget: Arc<MaskBudget>,
    pub source: IpAddr,
    /// The source is over its limits: a smaller share of the budget.
    pub suspect: bool,
    /// The least per-source share (0: `tls.mask_budget_per_source` alone).
    pub per_source_floor: usize,
}

/// What dialing the mask host gave.
#[derive(Debug)]
pub enum Dialed {
    Site(TcpStream, MaskPermit),
    /// The budget is spent: hold the client instead.
    OverBudget,
    Unreachable,
}

/// A connection to the mask host, opened eagerly or on demand.
pub struct MaskLink {
    addr: String,
    timeout: Duration,
    gate: Gate,
    /// The pre-connect, and whether it has begun dialing (past its delay).
    connecting: Option<(JoinHandle<Dialed>, Arc<AtomicBool>)>,
    conn: Option<Dialed>,
    /// Sent first to the site: who the client is (`[proxy_protocol] mask`).
    announce: Option<Announce>,
}

/// How long a connection known not to be a client waits for a free slot of
/// the fronting budget before it is held: a slot freed a moment later (the
/// previous probe's splice still closing) then serves it, as a busy site
/// would, a few milliseconds late.
const BUDGET_WAIT: Duration = Duration::from_millis(50);

async fn dial(addr: String, timeout: Duration, gate: &Gate, speculative: bool) -> Dialed {
    // A pre-connect never waits: it is only a guess.
    let wait = if speculative {
        Duration::ZERO
    } else {
        BUDGET_WAIT
    };
    let permit = gate
        .budget
        .acquire_within(
            gate.source,
            gate.suspect,
            speculative,
            gate.per_source_floor,
            wait,
        )
        .await;
    let Some(permit) = permit else {
        return Dialed::OverBudget;
    };
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Dialed::Site(s, permit)
        }
        // Out of local ports or descriptors: our own shortage under load,
        // not the site's answer. Hold the client, as a busy site would seem,
        // rather than reset it.
        Ok(Err(e)) if local_shortage(&e) => {
            tracing::debug!(error = %e, "no local resources to reach the mask host; holding");
            Dialed::OverBudget
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot connect to the mask host");
            Dialed::Unreachable
        }
        Err(_) => {
            tracing::debug!("connecting to the mask host timed out");
            Dialed::Unreachable
        }
    }
}

/// A connect error that says this host ran short (ephemeral ports, file
/// descriptors, buffers), not that the mask host refused.
fn local_shortage(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::AddrNotAvailable
        || matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
}

impl MaskLink {
    /// Starts connecting after `preconnect` (if given), or only when
    /// [`MaskLink::into_stream`] needs it.
    pub fn new(addr: String, timeout: Duration, preconnect: Option<Duration>, gate: Gate) -> Self {
        let connecting = preconnect.map(|delay| {
            let addr = addr.clone();
            let gate = gate.clone();
            let dialing = Arc::new(AtomicBool::new(delay.is_zero()));
            let started = dialing.clone();
            let task = tokio::spawn(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                started.store(true, Ordering::Release);
                dial(addr, timeout, &gate, true).await
            });
            (task, dialing)
        });
        Self {
            addr,
            timeout,
            gate,
            connecting,
            conn: None,
            announce: None,
        }
    }

    /// The link announcing the client to the site with a PROXY protocol
    /// header (sent before any of the client's bytes).
    pub fn announcing(mut self, announce: Option<Announce>) -> Self {
        self.announce = announce;
        self
    }

    /// The same link toward another mask address (a per-SNI mask host),
    /// still announcing the client if `keep_announce`.
    pub fn redirect(self, addr: String, keep_announce: bool) -> Self {
        let announce = self.announce.filter(|_| keep_announce);
        Self::new(addr, self.timeout, None, self.gate.clone()).announcing(announce)
    }

    /// The mask address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Resolves when the mask site sends something or closes before the
    /// handshake decided (never, if no eager connection exists).
    pub async fn activity(&mut self) {
        if let Some((h, _)) = &mut self.connecting {
            let r = h.await.unwrap_or(Dialed::Unreachable);
            self.connecting = None;
            self.conn = Some(r);
        }
        match &self.conn {
            Some(Dialed::Site(s, _)) => {
                let _ = s.readable().await;
            }
            _ => std::future::pending().await,
        }
    }

    /// The connected stream (connecting now if needed, within the budget).
    /// An eager dial that met the budget is tried once more: the budget may
    /// have room by the time the handshake decided.
    ///
    /// A handshake decided before the pre-connect's delay ended dials now:
    /// the site's answer must come as soon as the site would give it, never
    /// after the pre-connect delay.
    pub async fn into_stream(mut self) -> Dialed {
        if let Some((h, dialing)) = self.connecting.take() {
            if dialing.load(Ordering::Acquire) {
                self.conn = Some(h.await.unwrap_or(Dialed::Unreachable));
            } else {
                h.abort();
            }
        }
        match self.conn.take() {
            Some(d @ (Dialed::Site(..) | Dialed::Unreachable)) => d,
            Some(Dialed::OverBudget) | None => {
                dial(
                    std::mem::take(&mut self.addr),
                    self.timeout,
                    &self.gate,
                    false,
                )
                .await
            }
        }
    }
}

impl Drop for MaskLink {
    fn drop(&mut self) {
        if let Some(h) = &self.connecting {
            h.0.abort();
        }
    }
}

/// How a fronted splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both sides closed with FIN.
    Closed,
    /// One side reset; the reset was mirrored.
    Reset,
    /// The mask host could not be reached (the client was reset, as a
    /// site that is down would).
    Unreachable,
    /// The fronting budget was spent: the client was held silent.
    Held(crate::front::HoldEnd),
}

/// Splices `client` to the mask host, replaying `already_read` first; if the
/// client had already half-closed, the FIN is passed on after the replay.
pub async fn splice(
    client: TcpStream,
    already_read: &[u8],
    client_eof: bool,
    link: MaskLink,
) -> SpliceEnd {
    let budget = link.gate.budget.clone();
    let announce = link.announce;
    let (upstream, permit) = match link.into_stream().await {
        Dialed::Site(s, p) => (s, p),
        Dialed::OverBudget => {
            return SpliceEnd::Held(crate::front::hold(client, client_eof, &budget).await)
        }
        Dialed::Unreachable => {
            tracing::debug!("mask host unreachable; client reset");
            reset(&client);
            return SpliceEnd::Unreachable;
        }
    };
    // With an announcement, header and replay go out in one write.
    let first: std::borrow::Cow<'_, [u8]> = match announce {
        Some(a) => {
            let mut v = a.header();
            v.extend_from_slice(already_read);
            v.into()
        }
        None => already_read.into(),
    };
    if write_all(&upstream, &first).await.is_err() {
        tracing::debug!("mask host refused the replayed bytes; client reset");
        reset(&client);
        return SpliceEnd::Reset;
    }
    if client_eof {
        fin(&upstream);
    }
    // Whether the client's FIN waits until the mask connection and its
    // permit are gone: when the site closes after the client did, so a
    // prober that goes on at once finds the permit free again.
    let fin_client_last = {
        let up = pump(&client, &upstream);
        let down = pump(&upstream, &client);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (client_eof, false);
        let mut fin_client_last = false;
        while !(up_done && down_done) {
            tokio::select! {
                f = &mut up, if !up_done => match f {
                    // The client reset (or writing to the site failed): reset the site.
                    Flow::Reset => {
                        tracing::debug!("client reset a fronted connection; mirrored");
                        reset(&upstream);
                        return SpliceEnd::Reset;
                    }
                    Flow::Eof => {
                        fin(&upstream);
                        up_done = true;
                    }
                },
                f = &mut down, if !down_done => match f {
                    Flow::Reset => {
                        tracing::debug!("mask host reset a fronted connection; mirrored");
                        reset(&client);
                        return SpliceEnd::Reset;
                    }
                    Flow::Eof if up_done => {
                        fin_client_last = true;
                        down_done = true;
                    }
                    Flow::Eof => {
                        fin(&client);
                        down_done = true;
                    }
                },
            }
        }
        fin_client_last
    };
    drop(upstream);
    drop(permit);
    if fin_client_last {
        fin(&client);
    }
    SpliceEnd::Closed
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Eof,
    Reset,
}

/// Copies `from` → `to` until EOF (the caller passes the FIN on) or a
/// reset/error.
async fn pump(from: &TcpStream, to: &TcpStream) -> Flow {
    loop {
        if from.readable().await.is_err() {
            return Flow::Reset;
        }
        let mut buf = PooledBuf::take();
        loop {
            match from.try_read(&mut buf) {
                Ok(0) => return Flow::Eof,
                Ok(n) => {
                    if write_all(to, &buf[..n]).await.is_err() {
                        return Flow::Reset;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Flow::Reset,
            }
        }
    }
}

async fn write_all(s: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        s.writable().await?;
        match s.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn fin(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
}

/// Makes the close of `s` a reset (RST) instead of a FIN.
pub fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_shortages_are_told_from_a_refusing_site() {
        let e = |code| std::io::Error::from_raw_os_error(code);
        for code in [
            libc::EADDRNOTAVAIL,
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
        ] {
            assert!(local_shortage(&e(code)), "{code}");
        }
        for code in [libc::ECONNREFUSED, libc::ENETUNREACH, libc::ETIMEDOUT] {
            assert!(!local_shortage(&e(code)), "{code}");
        }
    }

    #[tokio::test]
    async fn a_decision_before_the_preconnect_delay_dials_at_once() {
        let site = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = site.local_addr().expect("addr").to_string();
        let budget = crate::front::MaskBudget::new(Default::default());
        let gate = Gate {
            budget: budget.clone(),
            source: "127.0.0.1".parse().expect("ip"),
            suspect: false,
            per_source_floor: 0,
        };
        let link = MaskLink::new(
            addr,
            Duration::from_secs(2),
            Some(Duration::from_secs(30)),
            gate,
        );
        let d = tokio::time::timeout(Duration::from_secs(5), link.into_stream())
            .await
            .expect("not after the 30 s pre-connect delay");
        assert!(matches!(d, Dialed::Site(..)));
        drop(d);
        assert_eq!(budget.stats().open, 0);
    }

    #[tokio::test]
    async fn out_of_budget_dials_are_held_and_free_permits_return() {
        let site = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = site.local_addr().expect("addr").to_string();
        let budget = crate::front::MaskBudget::new(crate::config::mask::MaskBudgetConfig {
            global: 1,
            per_source: 1,
            hold: Duration::from_secs(1),
        });
        let gate = Gate {
            budget: budget.clone(),
            source: "127.0.0.1".parse().expect("ip"),
            suspect: false,
            per_source_floor: 0,
        };
        let first = dial(addr.clone(), Duration::from_secs(2), &gate, false).await;
        assert!(matches!(first, Dialed::Site(..)));
        assert!(matches!(
            dial(addr.clone(), Duration::from_secs(2), &gate, false).await,
            Dialed::OverBudget
        ));
        drop(first);
        assert!(matches!(
            dial(addr, Duration::from_secs(2), &gate, false).await,
            Dialed::Site(..)
        ));
    }
}
