//! Fronting: a connection that is not a valid client is handed to the mask
//! host with every byte already read replayed, then spliced both ways until
//! either side closes. (Issue 4 grows this into full probe resistance.)

use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Splices `client` to `mask` (`host:port`), replaying `already_read` first.
/// Errors end the splice silently: the client only ever sees the mask host's bytes.
pub async fn splice(client: &mut TcpStream, already_read: &[u8], mask: &str, timeout: Duration) {
    let Ok(Ok(mut upstream)) = tokio::time::timeout(timeout, TcpStream::connect(mask)).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    if upstream.write_all(already_read).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(client, &mut upstream).await;
}
