//! The socket loop: receive, decode, answer (under the lease table's lock, no IO), send. Nothing
//! here waits for the store: lease changes and events are written behind.

use super::config::DhcpConfig;
use super::handler::{decode_request, encode_reply, MAXIMUM_REQUEST_SIZE};
use super::service::DhcpLeases;
use super::DhcpError;
use crate::metrics::{DhcpDrop, DhcpReply, Metrics};
use crate::store::now_ms;
use dhcproto::v4::{Message, MessageType};
use std::future::Future;
use std::io::ErrorKind;
use std::sync::Arc;
use tokio::net::UdpSocket;

/// Serves DHCP on an already-bound socket until `shutdown` completes. One socket serves one
/// interface (see [`super::bind_dhcp_socket`] and [`DhcpConfig::on_interface`]) plus any relayed
/// requests that reach it; several sockets share one [`DhcpLeases`] (and one [`Metrics`], where
/// each reply and each datagram left unanswered is counted).
pub async fn serve(
    socket: UdpSocket,
    config: DhcpConfig,
    leases: Arc<DhcpLeases>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DhcpError> {
    // One byte more than we accept, to tell an oversized datagram from a full-sized one.
    let mut received = vec![0u8; MAXIMUM_REQUEST_SIZE + 1];
    let mut encoded = Vec::with_capacity(1024);
    tokio::pin!(shutdown);
    loop {
        let length = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            result = socket.recv_from(&mut received) => match result {
                Ok((length, _source)) => length,
                Err(error) if is_transient(&error) => continue,
                Err(error) => return Err(DhcpError::Receive(error)),
            },
        };
        let Some(request) = decode_request(&received[..length]) else {
            metrics.dhcp_dropped(DhcpDrop::Malformed);
            continue;
        };
        let outcome = leases.answer(&request, &config, now_ms());
        let Some(reply) = outcome.reply else {
            if expects_reply(&request) {
                metrics.dhcp_dropped(DhcpDrop::Unanswered);
            }
            continue;
        };
        if let Err(error) = encode_reply(&reply.message, &mut encoded) {
            tracing::debug!(%error, "cannot encode a DHCP reply");
            metrics.dhcp_dropped(DhcpDrop::Unsent);
            continue;
        }
        if let Err(error) = socket.send_to(&encoded, reply.destination).await {
            // The client or relay is unreachable; it will ask again.
            tracing::debug!(%error, destination = %reply.destination, "cannot send a DHCP reply");
            metrics.dhcp_dropped(DhcpDrop::Unsent);
            continue;
        }
        if let Some(sent) = reply_kind(&reply.message) {
            metrics.dhcp_replied(sent);
        }
    }
}

/// RELEASE and DECLINE get no reply by design: their silence is no drop.
fn expects_reply(request: &Message) -> bool {
    !matches!(
        request.opts().msg_type(),
        Some(MessageType::Release | MessageType::Decline)
    )
}

fn reply_kind(reply: &Message) -> Option<DhcpReply> {
    match reply.opts().msg_type()? {
        MessageType::Offer => Some(DhcpReply::Offer),
        MessageType::Ack => Some(DhcpReply::Ack),
        MessageType::Nak => Some(DhcpReply::Nak),
        _ => None,
    }
}

/// Errors a UDP socket reports for one datagram (ICMP errors of earlier sends, signals).
fn is_transient(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::Interrupted
            | ErrorKind::WouldBlock
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
    )
}
