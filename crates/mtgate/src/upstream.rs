//! Upstream selection for direct mode: resolve the client's DC index through
//! the DC table, dial its addresses in the configured family order (falling
//! back to the other family) through the configured [`Connector`], and send
//! the proxy's own obfuscated2 header.

use crate::config::IpPreference;
use crate::dc::DcTable;
use crate::net::connect::{ConnectError, Connector, ErrorClass};
use crate::relay::UpstreamSide;
use mtgate_proto::obfs2::{self, DcIndex, ProtoTag, HEADER_LEN};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Why no upstream could be opened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("DC index {0} has no entry and the rule is `close`")]
    UnknownDc(i16),
    #[error("every address of DC {dc} failed; last error: {last}")]
    Unreachable { dc: u16, last: String },
}

/// A connected, header-sent upstream.
pub struct Connected {
    pub side: UpstreamSide,
    pub dc: u16,
    pub addr: SocketAddr,
    pub took: Duration,
}

/// Orders addresses: preferred family first, original order within a family.
pub fn ordered(addrs: &[SocketAddr], prefer: IpPreference) -> Vec<SocketAddr> {
    let mut v = addrs.to_vec();
    v.sort_by_key(|a| match (prefer, a.is_ipv6()) {
        (IpPreference::V6, true) | (IpPreference::V4, false) => 0,
        _ => 1,
    });
    v
}

/// Why one address could not be dialled.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    Connect(ConnectError),
    /// Connected, but the header could not be sent.
    #[error("{0}")]
    Send(std::io::Error),
}

impl DialError {
    /// The failure's class (metrics label, log word).
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Connect(e) => e.class,
            Self::Send(e) => ErrorClass::of_io(e),
        }
    }
}

/// Connects to one DC address through `connector` and sends the proxy's own
/// obfuscated2 header (PROTOCOL §5.1) announcing `tag`; the stream is then
/// ready for the transport `tag` names. `mtgate doctor` probes DCs with this.
pub async fn dial(
    connector: &Connector,
    addr: SocketAddr,
    tag: ProtoTag,
    dc: DcIndex,
) -> Result<UpstreamSide, DialError> {
    let mut stream = connector.connect(addr).await.map_err(DialError::Connect)?;
    let _ = stream.set_nodelay(true);
    let mut random = [0u8; HEADER_LEN];
    loop {
        mtgate_crypto::fill_random(&mut random);
        if obfs2::is_valid_init(&random) {
            break;
        }
    }
    // The client's signed index is passed on (a DC ignores it; it keeps media visible).
    let (header, ciphers) = obfs2::build_dc_header(&random, tag, dc);
    stream.write_all(&header).await.map_err(DialError::Send)?;
    Ok(UpstreamSide { stream, ciphers })
}

/// Dials the DC for `dc` and sends the obfuscated2 header with the client's tag.
pub async fn connect_direct(
    connector: &Connector,
    table: &DcTable,
    dc: DcIndex,
    tag: ProtoTag,
    prefer: IpPreference,
    failed: &mut (dyn FnMut(u16, ErrorClass, &str) + Send),
) -> Result<Connected, UpstreamError> {
    let (id, addrs) = table.resolve(dc.0).ok_or(UpstreamError::UnknownDc(dc.0))?;
    let started = Instant::now();
    let mut last = String::from("no address");
    for addr in ordered(addrs, prefer) {
        match dial(connector, addr, tag, dc).await {
            Ok(side) => {
                return Ok(Connected {
                    side,
                    dc: id,
                    addr,
                    took: started.elapsed(),
                })
            }
            Err(e) => {
                last = format!("{addr}: {e}");
                failed(id, e.class(), &last);
            }
        }
    }
    Err(UpstreamError::Unreachable { dc: id, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_order() {
        let a: Vec<SocketAddr> = vec![
            "1.1.1.1:1".parse().unwrap(),
            "[::1]:1".parse().unwrap(),
            "2.2.2.2:1".parse().unwrap(),
        ];
        assert!(ordered(&a, IpPreference::V6)[0].is_ipv6());
        assert_eq!(ordered(&a, IpPreference::V4), vec![a[0], a[2], a[1]]);
    }
}
