//! One read transfer, on its own socket connected to the client (a new transfer ID, RFC 1350):
//! optional OACK, then DATA in windows of `window_size` blocks (RFC 7440; 1 = lock-step), each
//! window retransmitted on timeout, the transfer ended at once by a client's ERROR.

use super::blocks::{Blocks, Reader};
use super::files::Source;
use super::options::Negotiated;
use super::packet::{self, ClientPacket};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, BufReader, ReadBuf};
use tokio::net::UdpSocket;

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    Completed,
    /// The client sent an ERROR (e.g. it refused the options, or gave up).
    ClientError {
        code: u16,
        message: String,
    },
    /// The client stopped acknowledging.
    TimedOut,
    /// The file could not be sent (not found, refused path, read error).
    Refused(String),
    Failed(String),
}

/// Counters of one transfer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferCounters {
    /// Payload bytes acknowledged by the client.
    pub bytes: u64,
    pub retransmissions: u32,
}

/// The fixed parameters of one transfer.
pub struct TransferPlan {
    pub negotiated: Negotiated,
    pub max_retries: u32,
    /// Netascii mode: LF goes out as CR LF, CR as CR NUL (RFC 1350, as tftpd-hpa sends it).
    pub netascii: bool,
}

/// Sends `source` to the peer `socket` is connected to.
pub async fn send_file(
    socket: &UdpSocket,
    source: Source,
    plan: &TransferPlan,
    counters: &mut TransferCounters,
) -> TransferOutcome {
    let reader = match open(source, plan).await {
        Ok(reader) => reader,
        Err(error) => {
            let _ = socket
                .send(&packet::encode_error(
                    packet::ErrorCode::NotDefined,
                    "read error",
                ))
                .await;
            return TransferOutcome::Refused(format!("cannot open the file: {error}"));
        }
    };
    let mut sender = WindowSender::new(socket, reader, plan);
    let outcome = match sender.run().await {
        Ok(outcome) => outcome,
        Err(error) => {
            let _ = socket
                .send(&packet::encode_error(
                    packet::ErrorCode::NotDefined,
                    "server error",
                ))
                .await;
            TransferOutcome::Failed(error.to_string())
        }
    };
    *counters = sender.counters;
    outcome
}

async fn open(source: Source, plan: &TransferPlan) -> io::Result<Blocks> {
    let negotiated = &plan.negotiated;
    Ok(match (source, plan.netascii) {
        (Source::Memory(bytes), false) => Blocks::memory(bytes),
        (Source::Memory(bytes), true) => Blocks::Stream(Box::new(NetAscii::new(Box::new(
            std::io::Cursor::new(bytes),
        )))),
        (Source::Disk { path, .. }, false) => {
            let window = usize::from(negotiated.window_size.max(1));
            Blocks::disk(path, negotiated.block_size, window).await?
        }
        (Source::Disk { path, .. }, true) => {
            let file = tokio::fs::File::open(path).await?;
            let buffered = BufReader::with_capacity(64 * 1024, file);
            Blocks::Stream(Box::new(NetAscii::new(Box::new(buffered))))
        }
    })
}

struct WindowSender<'a> {
    socket: &'a UdpSocket,
    reader: Blocks,
    block_size: usize,
    window_size: usize,
    timeout: Duration,
    max_retries: u32,
    oack: Option<Vec<u8>>,
    /// Encoded DATA packets sent (or about to be) and not yet acknowledged, oldest first.
    window: VecDeque<Vec<u8>>,
    /// The block number of the window's first packet.
    window_base: u16,
    /// How many of the window's packets have been sent at least once.
    sent: usize,
    read_everything: bool,
    counters: TransferCounters,
    receive_buffer: Vec<u8>,
    /// Packets of acknowledged blocks, reused for the next ones (no allocation per block).
    spare: Vec<Vec<u8>>,
}

enum Heard {
    /// The client acknowledged this many of the window's blocks.
    Acknowledged(usize),
    /// The client asks for the window again (an ACK of the block before the window).
    Resend,
    Error {
        code: u16,
        message: String,
    },
    Silence,
}

impl<'a> WindowSender<'a> {
    fn new(socket: &'a UdpSocket, reader: Blocks, plan: &TransferPlan) -> Self {
        let negotiated = &plan.negotiated;
        WindowSender {
            socket,
            reader,
            block_size: negotiated.block_size,
            window_size: usize::from(negotiated.window_size.max(1)),
            timeout: negotiated.timeout,
            max_retries: plan.max_retries,
            oack: (!negotiated.accepted.is_empty())
                .then(|| packet::encode_option_ack(&negotiated.accepted)),
            window: VecDeque::new(),
            window_base: 1,
            sent: 0,
            read_everything: false,
            counters: TransferCounters::default(),
            receive_buffer: vec![0; 2048],
            spare: Vec::new(),
        }
    }

    async fn run(&mut self) -> io::Result<TransferOutcome> {
        if let Some(outcome) = self.exchange_option_ack().await? {
            return Ok(outcome);
        }
        let mut retries = 0;
        loop {
            self.fill_window().await?;
            if self.window.is_empty() {
                return Ok(TransferOutcome::Completed);
            }
            self.send_unsent().await?;
            match self.hear(self.window_base.wrapping_sub(1)).await? {
                Heard::Acknowledged(count) => {
                    self.acknowledge(count);
                    retries = 0;
                }
                Heard::Error { code, message } => {
                    return Ok(TransferOutcome::ClientError { code, message })
                }
                Heard::Resend | Heard::Silence => {
                    retries += 1;
                    if retries > self.max_retries {
                        return Ok(TransferOutcome::TimedOut);
                    }
                    self.counters.retransmissions += 1;
                    self.sent = 0;
                }
            }
        }
    }

    /// Sends the OACK until the client acknowledges block 0. `Some` ends the transfer.
    async fn exchange_option_ack(&mut self) -> io::Result<Option<TransferOutcome>> {
        let Some(oack) = self.oack.take() else {
            return Ok(None);
        };
        for attempt in 0..=self.max_retries {
            if attempt > 0 {
                self.counters.retransmissions += 1;
            }
            self.socket.send(&oack).await?;
            let deadline = tokio::time::Instant::now() + self.timeout;
            loop {
                match self.receive_until(deadline).await? {
                    Some(ClientPacket::Ack(0)) => return Ok(None),
                    Some(ClientPacket::Error { code, message }) => {
                        return Ok(Some(TransferOutcome::ClientError { code, message }))
                    }
                    Some(_) => continue,
                    None => break,
                }
            }
        }
        Ok(Some(TransferOutcome::TimedOut))
    }

    async fn fill_window(&mut self) -> io::Result<()> {
        while !self.read_everything && self.window.len() < self.window_size {
            let block = self.window_base.wrapping_add(self.window.len() as u16);
            let mut data = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(4 + self.block_size));
            data.clear();
            packet::start_data(&mut data, block);
            let payload = self.reader.append_block(&mut data, self.block_size).await?;
            // A short (possibly empty) block is the last one.
            self.read_everything = payload < self.block_size;
            self.window.push_back(data);
        }
        Ok(())
    }

    async fn send_unsent(&mut self) -> io::Result<()> {
        for data in self.window.iter().skip(self.sent) {
            self.socket.send(data).await?;
        }
        self.sent = self.window.len();
        Ok(())
    }

    fn acknowledge(&mut self, count: usize) {
        for data in self.window.drain(..count) {
            self.counters.bytes += (data.len() - 4) as u64;
            self.spare.push(data);
        }
        self.window_base = self.window_base.wrapping_add(count as u16);
        self.sent = self.sent.saturating_sub(count);
    }

    /// Waits up to the timeout for an ACK inside the window (or an ERROR). Duplicate ACKs of
    /// older blocks are ignored in lock-step, so a delayed duplicate cannot double the traffic
    /// (the Sorcerer's Apprentice bug); with a window they ask for the window again.
    async fn hear(&mut self, before_window: u16) -> io::Result<Heard> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match self.receive_until(deadline).await? {
                None => return Ok(Heard::Silence),
                Some(ClientPacket::Error { code, message }) => {
                    return Ok(Heard::Error { code, message })
                }
                Some(ClientPacket::Ack(block)) => {
                    let offset = usize::from(block.wrapping_sub(self.window_base));
                    if offset < self.window.len() {
                        return Ok(Heard::Acknowledged(offset + 1));
                    }
                    if block == before_window && self.window_size > 1 {
                        return Ok(Heard::Resend);
                    }
                }
                Some(ClientPacket::Other) => {}
            }
        }
    }

    /// The next packet from the client, or `None` at the deadline. The socket is connected, so
    /// the kernel drops datagrams from anyone else. ICMP errors (the client is gone) surface as
    /// errors and end the transfer.
    async fn receive_until(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> io::Result<Option<ClientPacket>> {
        match tokio::time::timeout_at(deadline, self.socket.recv(&mut self.receive_buffer)).await {
            Err(_elapsed) => Ok(None),
            Ok(Ok(length)) => Ok(Some(packet::parse_client_packet(
                &self.receive_buffer[..length],
            ))),
            Ok(Err(error)) => Err(error),
        }
    }
}

/// A reader giving `inner`'s bytes in netascii: LF as CR LF, CR as CR NUL (RFC 1350; a Unix
/// file's lines, as tftpd-hpa converts them and a client in ascii mode converts them back).
struct NetAscii {
    inner: Reader,
    /// Converted bytes not handed out yet, from `taken` on.
    converted: Vec<u8>,
    taken: usize,
    raw: Vec<u8>,
}

impl NetAscii {
    fn new(inner: Reader) -> Self {
        NetAscii {
            inner,
            converted: Vec::new(),
            taken: 0,
            raw: vec![0; 8192],
        }
    }
}

/// Appends `raw` converted to netascii to `out`.
fn to_netascii(raw: &[u8], out: &mut Vec<u8>) {
    for &byte in raw {
        match byte {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            other => out.push(other),
        }
    }
}

impl AsyncRead for NetAscii {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken == this.converted.len() {
            let mut raw = ReadBuf::new(&mut this.raw);
            match Pin::new(&mut this.inner).poll_read(context, &mut raw) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {}
            }
            this.converted.clear();
            this.taken = 0;
            // Nothing read is the end of the file, and is passed on as such.
            to_netascii(raw.filled(), &mut this.converted);
        }
        let count = buffer.remaining().min(this.converted.len() - this.taken);
        buffer.put_slice(&this.converted[this.taken..this.taken + count]);
        this.taken += count;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn netascii_sends_lf_as_cr_lf_and_cr_as_cr_nul() {
        let text = b"one\ntwo\r\nthree\rfour".repeat(1000);
        let mut reader = NetAscii::new(Box::new(std::io::Cursor::new(text.clone())));
        let mut sent = Vec::new();
        reader.read_to_end(&mut sent).await.expect("read");
        let mut expected = Vec::new();
        for _ in 0..1000 {
            expected.extend_from_slice(b"one\r\ntwo\r\0\r\nthree\r\0four");
        }
        assert_eq!(sent, expected);
    }
}
