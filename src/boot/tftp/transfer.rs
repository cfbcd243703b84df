//! One read transfer, on its own socket connected to the client (a new transfer ID, RFC 1350):
//! optional OACK, then DATA in windows of `window_size` blocks (RFC 7440; 1 = lock-step), each
//! window retransmitted on timeout, the transfer ended at once by a client's ERROR.
//!
//! A transfer runs on a thread of its own with blocking `recv` and `send`, as tftpd-hpa runs
//! one process per transfer. In lock-step a transfer's speed is one block per round trip, and
//! on tokio each ACK went through the reactor's `epoll`, a task wake-up and often a hand-over
//! between worker threads before the next DATA left: 0.74-0.98x tftpd-hpa on every lock-step
//! row of peer-baselines.sh. A blocked `recv` is woken by the kernel straight into this thread.
//! Transfers are few and short (boot loaders, a few hundred at once at most), so a thread each
//! costs little; `TftpConfig::max_transfers` bounds them.

use super::blocks::{Blocks, Reader};
use super::files::Source;
use super::options::Negotiated;
use super::packet::{self, ClientPacket};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The longest a transfer waits in one `recv` before it looks at its stop flag: a transfer
/// whose server shuts down ends within this.
pub const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(200);

const SHUTTING_DOWN: &str = "the server is shutting down";

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

/// Sends `source` to the peer `socket` is connected to, blocking this thread until the
/// transfer ends; gives up soon after `stop` is set.
pub fn send_file(
    socket: &UdpSocket,
    source: Source,
    plan: &TransferPlan,
    stop: &AtomicBool,
    counters: &mut TransferCounters,
) -> TransferOutcome {
    let reader = match open(source, plan) {
        Ok(reader) => reader,
        Err(error) => {
            let _ = socket.send(&packet::encode_error(
                packet::ErrorCode::NotDefined,
                "read error",
            ));
            return TransferOutcome::Refused(format!("cannot open the file: {error}"));
        }
    };
    let mut sender = WindowSender::new(socket, reader, plan, stop);
    let outcome = match sender.run() {
        Ok(outcome) => outcome,
        Err(error) => {
            // The client is told, so that it gives up at once rather than after its timeouts.
            let message = if stop.load(Ordering::Relaxed) {
                SHUTTING_DOWN
            } else {
                "server error"
            };
            let _ = socket.send(&packet::encode_error(
                packet::ErrorCode::NotDefined,
                message,
            ));
            TransferOutcome::Failed(error.to_string())
        }
    };
    *counters = sender.counters;
    outcome
}

fn open(source: Source, plan: &TransferPlan) -> io::Result<Blocks> {
    Ok(match (source, plan.netascii) {
        (Source::Memory(bytes), false) => Blocks::memory(bytes),
        (Source::Memory(bytes), true) => Blocks::Stream(Box::new(NetAscii::new(Box::new(
            std::io::Cursor::new(bytes),
        )))),
        (Source::Disk { path, size }, false) => {
            Blocks::disk(&path, size, plan.negotiated.block_size)?
        }
        (Source::Disk { path, .. }, true) => {
            let file = std::fs::File::open(path)?;
            let buffered = std::io::BufReader::with_capacity(64 * 1024, file);
            Blocks::Stream(Box::new(NetAscii::new(Box::new(buffered))))
        }
    })
}

struct WindowSender<'a> {
    socket: &'a UdpSocket,
    stop: &'a AtomicBool,
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
    fn new(
        socket: &'a UdpSocket,
        reader: Blocks,
        plan: &TransferPlan,
        stop: &'a AtomicBool,
    ) -> Self {
        let negotiated = &plan.negotiated;
        WindowSender {
            socket,
            stop,
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

    fn run(&mut self) -> io::Result<TransferOutcome> {
        if let Some(outcome) = self.exchange_option_ack()? {
            return Ok(outcome);
        }
        let mut retries = 0;
        loop {
            self.fill_window()?;
            if self.window.is_empty() {
                return Ok(TransferOutcome::Completed);
            }
            self.send_unsent()?;
            match self.hear(self.window_base.wrapping_sub(1))? {
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
    fn exchange_option_ack(&mut self) -> io::Result<Option<TransferOutcome>> {
        let Some(oack) = self.oack.take() else {
            return Ok(None);
        };
        for attempt in 0..=self.max_retries {
            if attempt > 0 {
                self.counters.retransmissions += 1;
            }
            self.socket.send(&oack)?;
            let deadline = Instant::now() + self.timeout;
            loop {
                match self.receive_until(deadline)? {
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

    fn fill_window(&mut self) -> io::Result<()> {
        while !self.read_everything && self.window.len() < self.window_size {
            let block = self.window_base.wrapping_add(self.window.len() as u16);
            let mut data = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(4 + self.block_size));
            data.clear();
            packet::start_data(&mut data, block);
            let payload = self.reader.append_block(&mut data, self.block_size)?;
            // A short (possibly empty) block is the last one.
            self.read_everything = payload < self.block_size;
            self.window.push_back(data);
        }
        Ok(())
    }

    fn send_unsent(&mut self) -> io::Result<()> {
        for data in self.window.iter().skip(self.sent) {
            self.socket.send(data)?;
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
    fn hear(&mut self, before_window: u16) -> io::Result<Heard> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.receive_until(deadline)? {
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

    /// The next packet from the client, or `None` at the deadline; an error once the transfer
    /// is told to stop. The socket is connected, so the kernel drops datagrams from anyone else.
    /// ICMP errors (the client is gone) surface as errors and end the transfer.
    fn receive_until(&mut self, deadline: Instant) -> io::Result<Option<ClientPacket>> {
        loop {
            match self.socket.recv(&mut self.receive_buffer) {
                Ok(length) => {
                    return Ok(Some(packet::parse_client_packet(
                        &self.receive_buffer[..length],
                    )))
                }
                Err(error) if is_timeout(&error) => {
                    if self.stop.load(Ordering::Relaxed) {
                        return Err(io::Error::other(SHUTTING_DOWN));
                    }
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
}

/// Sets the socket's receive timeout for `receive_until`: the shorter of the transfer's
/// timeout and the stop check, set once per transfer (not a system call per block).
pub fn prepare_socket(socket: &UdpSocket, timeout: Duration) -> io::Result<()> {
    let slice = timeout
        .min(STOP_CHECK_INTERVAL)
        .max(Duration::from_millis(1));
    socket.set_read_timeout(Some(slice))
}

/// A blocking `recv` that ran out of time (Linux says `WouldBlock` for `SO_RCVTIMEO`).
fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
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

impl Read for NetAscii {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.taken == self.converted.len() {
            let count = self.inner.read(&mut self.raw)?;
            self.converted.clear();
            self.taken = 0;
            // Nothing read is the end of the file, and is passed on as such.
            to_netascii(&self.raw[..count], &mut self.converted);
        }
        let count = buffer.len().min(self.converted.len() - self.taken);
        buffer[..count].copy_from_slice(&self.converted[self.taken..self.taken + count]);
        self.taken += count;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netascii_sends_lf_as_cr_lf_and_cr_as_cr_nul() {
        let text = b"one\ntwo\r\nthree\rfour".repeat(1000);
        let mut reader = NetAscii::new(Box::new(std::io::Cursor::new(text.clone())));
        let mut sent = Vec::new();
        reader.read_to_end(&mut sent).expect("read");
        let mut expected = Vec::new();
        for _ in 0..1000 {
            expected.extend_from_slice(b"one\r\ntwo\r\0\r\nthree\r\0four");
        }
        assert_eq!(sent, expected);
    }
}
