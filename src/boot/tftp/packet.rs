//! The TFTP wire format (RFC 1350, options RFC 2347): parsing what clients send and encoding what
//! the server sends. Parsing never panics on any input; it returns `None` or an error text.

/// Operation codes.
pub const OPCODE_READ_REQUEST: u16 = 1;
pub const OPCODE_WRITE_REQUEST: u16 = 2;
pub const OPCODE_DATA: u16 = 3;
pub const OPCODE_ACK: u16 = 4;
pub const OPCODE_ERROR: u16 = 5;
pub const OPCODE_OPTION_ACK: u16 = 6;

/// Error codes (RFC 1350 and RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    IllegalOperation = 4,
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub write: bool,
    pub filename: String,
    pub mode: String,
    /// Option names lowercased, in the client's order.
    pub options: Vec<(String, String)>,
}

/// What a client sends during a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPacket {
    Ack(u16),
    Error {
        code: u16,
        message: String,
    },
    /// Anything else: a new request on the transfer port, data, garbage.
    Other,
}

fn opcode_of(datagram: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*datagram.first()?, *datagram.get(1)?]))
}

/// Whether the datagram claims to be a request (so it deserves an error reply when malformed).
pub fn looks_like_request(datagram: &[u8]) -> bool {
    matches!(
        opcode_of(datagram),
        Some(OPCODE_READ_REQUEST | OPCODE_WRITE_REQUEST)
    )
}

/// Parses a read or write request: opcode, then NUL-terminated filename, mode and option pairs.
pub fn parse_request(datagram: &[u8]) -> Result<Request, &'static str> {
    let write = match opcode_of(datagram) {
        Some(OPCODE_READ_REQUEST) => false,
        Some(OPCODE_WRITE_REQUEST) => true,
        _ => return Err("not a read or write request"),
    };
    let body = &datagram[2..];
    if body.last() != Some(&0) {
        return Err("the request is not NUL-terminated");
    }
    let mut fields = body[..body.len() - 1].split(|byte| *byte == 0);
    let filename = text_field(fields.next())?;
    let mode = text_field(fields.next())?.to_ascii_lowercase();
    if filename.is_empty() {
        return Err("empty file name");
    }
    if !matches!(mode.as_str(), "octet" | "netascii" | "mail") {
        return Err("unknown transfer mode");
    }
    let rest: Vec<&[u8]> = fields.collect();
    if !rest.len().is_multiple_of(2) {
        return Err("an option without a value");
    }
    let mut options = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks(2) {
        let name = text_field(Some(pair[0]))?.to_ascii_lowercase();
        let value = text_field(Some(pair[1]))?.to_string();
        options.push((name, value));
    }
    Ok(Request {
        write,
        filename: filename.to_string(),
        mode,
        options,
    })
}

fn text_field(field: Option<&[u8]>) -> Result<&str, &'static str> {
    let field = field.ok_or("a field is missing")?;
    std::str::from_utf8(field).map_err(|_| "a field is not UTF-8")
}

/// Parses what a client sends on a transfer's port.
pub fn parse_client_packet(datagram: &[u8]) -> ClientPacket {
    match opcode_of(datagram) {
        Some(OPCODE_ACK) if datagram.len() >= 4 => {
            ClientPacket::Ack(u16::from_be_bytes([datagram[2], datagram[3]]))
        }
        Some(OPCODE_ERROR) if datagram.len() >= 4 => {
            let code = u16::from_be_bytes([datagram[2], datagram[3]]);
            let text = &datagram[4..];
            let text = text.split(|byte| *byte == 0).next().unwrap_or_default();
            let message: String = String::from_utf8_lossy(text)
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            ClientPacket::Error { code, message }
        }
        _ => ClientPacket::Other,
    }
}

/// Writes a DATA packet header into `buffer` (cleared first); the caller appends the payload.
pub fn start_data(buffer: &mut Vec<u8>, block: u16) {
    buffer.clear();
    buffer.extend_from_slice(&OPCODE_DATA.to_be_bytes());
    buffer.extend_from_slice(&block.to_be_bytes());
}

pub fn encode_error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut packet = Vec::with_capacity(5 + message.len());
    packet.extend_from_slice(&OPCODE_ERROR.to_be_bytes());
    packet.extend_from_slice(&(code as u16).to_be_bytes());
    packet.extend_from_slice(message.as_bytes());
    packet.push(0);
    packet
}

pub fn encode_option_ack(options: &[(&'static str, String)]) -> Vec<u8> {
    let mut packet = OPCODE_OPTION_ACK.to_be_bytes().to_vec();
    for (name, value) in options {
        packet.extend_from_slice(name.as_bytes());
        packet.push(0);
        packet.extend_from_slice(value.as_bytes());
        packet.push(0);
    }
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_bytes(opcode: u16, fields: &[&str]) -> Vec<u8> {
        let mut bytes = opcode.to_be_bytes().to_vec();
        for field in fields {
            bytes.extend_from_slice(field.as_bytes());
            bytes.push(0);
        }
        bytes
    }

    #[test]
    fn a_read_request_with_options_parses() {
        let bytes = request_bytes(
            1,
            &["undionly.kpxe", "OCTET", "BLKSIZE", "1468", "tsize", "0"],
        );
        let request = parse_request(&bytes).expect("parses");
        assert!(!request.write);
        assert_eq!(request.filename, "undionly.kpxe");
        assert_eq!(request.mode, "octet");
        assert_eq!(
            request.options,
            vec![
                ("blksize".into(), "1468".into()),
                ("tsize".into(), "0".into())
            ]
        );
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert!(parse_request(&[0, 1]).is_err());
        assert!(parse_request(&[0, 1, b'a']).is_err());
        assert!(parse_request(&request_bytes(1, &["a", "octet", "blksize"])).is_err());
        assert!(parse_request(&request_bytes(1, &["", "octet"])).is_err());
        assert!(parse_request(&request_bytes(1, &["a", "binary"])).is_err());
        assert!(parse_request(&request_bytes(3, &["a", "octet"])).is_err());
    }

    #[test]
    fn client_packets_parse() {
        assert_eq!(parse_client_packet(&[0, 4, 1, 2]), ClientPacket::Ack(258));
        assert_eq!(
            parse_client_packet(b"\x00\x05\x00\x08no\x00"),
            ClientPacket::Error {
                code: 8,
                message: "no".into()
            }
        );
        assert_eq!(parse_client_packet(&[0, 4, 1]), ClientPacket::Other);
        assert_eq!(parse_client_packet(&[]), ClientPacket::Other);
    }
}
