//! The socket loop: receive, decode, answer (under the lease table's lock, no IO), send. The loop
//! never waits for the store: lease changes and events are written behind, and an ACK is handed
//! to a task that sends it once the lease it grants is committed (durable before the ACK), or a
//! NAK instead when the database refused the lease (another controller's client holds the
//! address).

use super::config::DhcpConfig;
use super::handler::{
    decode_request, encode_reply, wire_destination, MAXIMUM_REQUEST_SIZE, MINIMUM_REPLY_SIZE,
};
use super::persist::Settled;
use super::service::DhcpLeases;
use super::DhcpError;
use crate::metrics::{DhcpDrop, DhcpReply, Metrics};
use crate::store::now_ms;
use dhcproto::v4::{Message, MessageType};
use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

/// An ACK whose lease is not committed by then is dropped: the store is failing, and the client
/// asks again (a REQUEST is retransmitted after about 4 s, RFC 2131 4.1).
const ACK_COMMIT_LIMIT: Duration = Duration::from_secs(4);

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
    let socket = Arc::new(socket);
    // Shared with the tasks that send ACKs, which may have to answer with a NAK instead.
    let config = Arc::new(config);
    // One byte more than we accept, to tell an oversized datagram from a full-sized one.
    let mut received = vec![0u8; MAXIMUM_REQUEST_SIZE + 1];
    let mut encoded = Vec::with_capacity(1024);
    tokio::pin!(shutdown);
    loop {
        let (length, source) = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            result = socket.recv_from(&mut received) => match result {
                Ok(received) => received,
                Err(error) if is_transient(&error) => continue,
                Err(error) => return Err(DhcpError::Receive(error)),
            },
        };
        let Some(request) = decode_request(&received[..length]) else {
            metrics.dhcp_dropped(DhcpDrop::Malformed);
            continue;
        };
        let (outcome, grant) = leases.answer_durably(&request, &config, now_ms());
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
        let destination = wire_destination(reply.destination, source);
        let kind = reply_kind(&reply.message);
        match grant {
            None => send(&socket, &encoded, destination, (&metrics, kind)).await,
            Some(sequence) => {
                let waiting = WaitingAck {
                    socket: Arc::clone(&socket),
                    leases: Arc::clone(&leases),
                    metrics: Arc::clone(&metrics),
                    config: Arc::clone(&config),
                    encoded: encoded.clone(),
                    request,
                    source,
                    destination,
                    kind,
                };
                tokio::spawn(waiting.send_once_settled(sequence));
            }
        }
    }
}

/// An ACK waiting for its lease's batch, with what it takes to send a NAK instead.
struct WaitingAck {
    socket: Arc<UdpSocket>,
    leases: Arc<DhcpLeases>,
    metrics: Arc<Metrics>,
    config: Arc<DhcpConfig>,
    encoded: Vec<u8>,
    request: Message,
    source: SocketAddr,
    destination: SocketAddr,
    kind: Option<DhcpReply>,
}

impl WaitingAck {
    async fn send_once_settled(self, sequence: u64) {
        let (metrics, destination) = (&self.metrics, self.destination);
        match self.leases.settled(sequence, ACK_COMMIT_LIMIT).await {
            Settled::Committed => {
                send(
                    &self.socket,
                    &self.encoded,
                    destination,
                    (metrics, self.kind),
                )
                .await;
            }
            Settled::Refused => self.send_refusal().await,
            Settled::TimedOut => {
                tracing::warn!(%destination, "DHCP ACK not sent: its lease could not be stored in time");
                metrics.dhcp_dropped(DhcpDrop::Unsent);
            }
        }
    }

    /// The lease went to another controller's client: a NAK, so the client starts over.
    async fn send_refusal(&self) {
        let outcome = self.leases.refusal(&self.request, &self.config, now_ms());
        let Some(reply) = outcome.reply else {
            return;
        };
        let mut encoded = Vec::with_capacity(MINIMUM_REPLY_SIZE);
        if encode_reply(&reply.message, &mut encoded).is_err() {
            self.metrics.dhcp_dropped(DhcpDrop::Unsent);
            return;
        }
        let destination = wire_destination(reply.destination, self.source);
        let counted = (&*self.metrics, Some(DhcpReply::Nak));
        send(&self.socket, &encoded, destination, counted).await;
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

/// Sends one reply and counts it: as its type once sent, else as unsent.
async fn send(
    socket: &UdpSocket,
    encoded: &[u8],
    destination: SocketAddr,
    (metrics, kind): (&Metrics, Option<DhcpReply>),
) {
    match socket.send_to(encoded, destination).await {
        Ok(_) => {
            if let Some(kind) = kind {
                metrics.dhcp_replied(kind);
            }
        }
        Err(error) => {
            // The client or relay is unreachable; it will ask again.
            tracing::debug!(%error, %destination, "cannot send a DHCP reply");
            metrics.dhcp_dropped(DhcpDrop::Unsent);
        }
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
