//! The simulated machine's side of DHCP and TFTP: what a PXE ROM and iPXE send, over real UDP
//! sockets. DHCP goes through a relay address (giaddr) so that the controller answers on a port
//! of that address: no root, no broadcast (see `[controller] dhcp_listen`).

use super::SimError;
use crate::model::MacAddr;
use dhcproto::v4::{
    Architecture, DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

/// How long a client waits for one DHCP reply before sending again (PXE ROMs wait 4 s, then 8
/// and more; shorter here so a lost reply costs a test little).
const DHCP_WAIT: Duration = Duration::from_millis(1000);
const DHCP_TRIES: u32 = 6;
/// DISCOVERs a client sends after NAKs before it gives up.
const DHCP_STARTS: u32 = 4;
const TFTP_WAIT: Duration = Duration::from_secs(3);
const TFTP_TRIES: u32 = 4;
const TFTP_BLOCK_SIZE: usize = 1468;

/// Who is asking: the firmware's PXE ROM, or iPXE once loaded (RFC 4578 arch 7: UEFI x64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpClient {
    PxeRom,
    Ipxe,
}

/// What the DHCP server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpAnswer {
    pub ip: Ipv4Addr,
    pub server: Ipv4Addr,
    /// Option 67 (or the `file` field): a TFTP file name for a PXE ROM, a URL for iPXE.
    pub boot_file: Option<String>,
}

/// DISCOVER → OFFER → REQUEST → ACK through relay `relay` (a local address the socket binds),
/// to the server at `server`. `lost_replies` replies are dropped on arrival (and counted down),
/// as if the network had lost them; the client sends again. A NAK (the server's store refused
/// the lease: another controller holds the address) starts over with a DISCOVER, as RFC 2131
/// asks, a few times.
pub async fn dhcp_lease(
    server: SocketAddr,
    relay: Ipv4Addr,
    mac: MacAddr,
    client: DhcpClient,
    lost_replies: &mut u32,
) -> Result<DhcpAnswer, SimError> {
    let socket = UdpSocket::bind((relay, 0))
        .await
        .map_err(|source| SimError::io("binding the DHCP relay socket", source))?;
    for _ in 0..DHCP_STARTS {
        let xid: u32 = rand::random();
        let discover = request_message(mac, xid, relay, client, MessageType::Discover);
        let offer = exchange(&socket, server, &discover, MessageType::Offer, lost_replies).await?;
        let mut request = request_message(mac, xid, relay, client, MessageType::Request);
        let options = request.opts_mut();
        options.insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        if let Some(DhcpOption::ServerIdentifier(id)) =
            offer.opts().get(OptionCode::ServerIdentifier)
        {
            options.insert(DhcpOption::ServerIdentifier(*id));
        }
        let ack = exchange(&socket, server, &request, MessageType::Ack, lost_replies).await?;
        if ack.opts().msg_type() == Some(MessageType::Nak) {
            continue;
        }
        let boot_file = match ack.opts().get(OptionCode::BootfileName) {
            Some(DhcpOption::BootfileName(bytes)) => {
                Some(String::from_utf8_lossy(bytes).to_string())
            }
            _ => None,
        };
        return Ok(DhcpAnswer {
            ip: ack.yiaddr(),
            server: ack.siaddr(),
            boot_file,
        });
    }
    Err(SimError::Protocol(format!(
        "DHCP from {server}: NAKed {DHCP_STARTS} times"
    )))
}

fn request_message(
    mac: MacAddr,
    xid: u32,
    relay: Ipv4Addr,
    client: DhcpClient,
    message_type: MessageType,
) -> Message {
    let mut message = Message::default();
    message
        .set_opcode(Opcode::BootRequest)
        .set_htype(HType::Eth)
        .set_xid(xid)
        .set_flags(Flags::default().set_broadcast())
        .set_giaddr(relay)
        .set_hops(1)
        .set_chaddr(&mac.0);
    let options = message.opts_mut();
    options.insert(DhcpOption::MessageType(message_type));
    options.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    options.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(7)));
    options.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::BootfileName,
        OptionCode::TFTPServerName,
    ]));
    if client == DhcpClient::Ipxe {
        options.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        options.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![177, 5, 1, 0x10, 0xec, 0x81, 0x39],
        )));
    }
    message
}

/// Sends `message` until a reply of `expected` type with its xid arrives (or, when an ACK is
/// expected, a NAK).
async fn exchange(
    socket: &UdpSocket,
    server: SocketAddr,
    message: &Message,
    expected: MessageType,
    lost_replies: &mut u32,
) -> Result<Message, SimError> {
    let mut bytes = Vec::new();
    message
        .encode(&mut Encoder::new(&mut bytes))
        .map_err(|error| SimError::Protocol(format!("encoding a DHCP message: {error}")))?;
    let mut buffer = vec![0u8; 1500];
    for _ in 0..DHCP_TRIES {
        socket
            .send_to(&bytes, server)
            .await
            .map_err(|source| SimError::io("sending a DHCP request", source))?;
        let deadline = tokio::time::Instant::now() + DHCP_WAIT;
        while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await {
            let length =
                received.map_err(|source| SimError::io("receiving a DHCP reply", source))?;
            let Ok(reply) = Message::decode(&mut Decoder::new(&buffer[..length])) else {
                continue;
            };
            let answered = reply.opts().msg_type();
            let nak = expected == MessageType::Ack && answered == Some(MessageType::Nak);
            if reply.xid() != message.xid() || (answered != Some(expected) && !nak) {
                continue;
            }
            if *lost_replies > 0 {
                *lost_replies -= 1;
                continue;
            }
            return Ok(reply);
        }
    }
    Err(SimError::Protocol(format!(
        "no DHCP {expected:?} from {server} after {DHCP_TRIES} tries"
    )))
}

/// Fetches `file` by TFTP (RFC 1350 with blksize and tsize, RFC 2348/2349) from `server`,
/// from a socket on `local`; returns its bytes.
pub async fn tftp_get(
    server: SocketAddr,
    local: Ipv4Addr,
    file: &str,
) -> Result<Vec<u8>, SimError> {
    let socket = UdpSocket::bind((local, 0))
        .await
        .map_err(|source| SimError::io("binding the TFTP socket", source))?;
    let mut request = vec![0, 1];
    for part in [
        file,
        "octet",
        "blksize",
        &TFTP_BLOCK_SIZE.to_string(),
        "tsize",
        "0",
    ] {
        request.extend_from_slice(part.as_bytes());
        request.push(0);
    }
    let mut last_sent = request;
    let mut destination = server;
    let mut block_size = 512;
    let mut expected_block: u16 = 1;
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 65536];
    let mut tries = 0;
    loop {
        socket
            .send_to(&last_sent, destination)
            .await
            .map_err(|source| SimError::io("sending a TFTP packet", source))?;
        let answer = tokio::time::timeout(TFTP_WAIT, socket.recv_from(&mut buffer)).await;
        let Ok(answer) = answer else {
            tries += 1;
            if tries >= TFTP_TRIES {
                return Err(SimError::Protocol(format!(
                    "TFTP {file}: no answer from {destination}"
                )));
            }
            continue;
        };
        tries = 0;
        let (length, from) = answer.map_err(|source| SimError::io("receiving TFTP", source))?;
        let packet = &buffer[..length];
        // The transfer's own port answers: every later packet goes there.
        destination = from;
        match packet.get(..2) {
            Some([0, 6]) => {
                block_size = option_value(&packet[2..], "blksize").unwrap_or(512);
                last_sent = vec![0, 4, 0, 0];
            }
            Some([0, 3]) if packet.len() >= 4 => {
                let block = u16::from_be_bytes([packet[2], packet[3]]);
                if block == expected_block {
                    received.extend_from_slice(&packet[4..]);
                    expected_block = expected_block.wrapping_add(1);
                }
                last_sent = vec![0, 4, packet[2], packet[3]];
                if block.wrapping_add(1) == expected_block && packet.len() - 4 < block_size {
                    let _ = socket.send_to(&last_sent, destination).await;
                    return Ok(received);
                }
            }
            Some([0, 5]) => {
                let message = String::from_utf8_lossy(packet.get(4..).unwrap_or_default());
                return Err(SimError::Protocol(format!(
                    "TFTP {file}: error from the server: {}",
                    message.trim_end_matches('\0')
                )));
            }
            _ => {
                return Err(SimError::Protocol(format!(
                    "TFTP {file}: an unexpected packet"
                )));
            }
        }
    }
}

/// A numeric option of an OACK (`name\0value\0...`).
fn option_value(options: &[u8], name: &str) -> Option<usize> {
    let words: Vec<&[u8]> = options.split(|byte| *byte == 0).collect();
    words.chunks(2).find_map(|pair| match pair {
        [key, value] if key.eq_ignore_ascii_case(name.as_bytes()) => {
            std::str::from_utf8(value).ok()?.parse().ok()
        }
        _ => None,
    })
}
