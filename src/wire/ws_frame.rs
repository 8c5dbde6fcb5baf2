//! WebSocket frames (RFC 6455): their heads, what the protocol forbids in
//! them, and close frames.

/// Opcodes.
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Close codes.
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const BAD_GATEWAY: u16 = 1014;

/// Which way frames travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// From the client to the upstream: frames must be masked.
    ToUpstream,
    /// From the upstream to the client: frames must not be masked.
    ToClient,
}

impl Way {
    fn sender(self) -> &'static str {
        match self {
            Way::ToUpstream => "the client",
            Way::ToClient => "the upstream",
        }
    }
}

/// A frame the protocol forbids.
#[derive(Debug, thiserror::Error)]
#[error("{sender} sent a frame the WebSocket protocol forbids: {why}")]
pub struct ProtocolError {
    sender: &'static str,
    /// What was wrong, in a few words (a close frame's reason).
    pub why: &'static str,
    /// Which way the frame went.
    pub way: Way,
}

/// The head of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) fin: bool,
    pub(super) rsv1: bool,
    pub(super) opcode: u8,
    pub(super) masked: bool,
    /// The masking key of a client's frame (zeros for a server's).
    pub(super) mask: [u8; 4],
    /// The payload's length.
    pub(super) len: u64,
    /// Bytes the head takes, mask key included.
    pub(super) size: usize,
}

impl Head {
    pub(super) fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

impl ProtocolError {
    pub(super) fn new(way: Way, why: &'static str) -> ProtocolError {
        ProtocolError {
            sender: way.sender(),
            why,
            way,
        }
    }
}

/// Parses a frame head at the start of `buf`; `None` while incomplete.
pub(super) fn parse_head(buf: &[u8], way: Way) -> Result<Option<Head>, ProtocolError> {
    let error = |why| ProtocolError::new(way, why);
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x30 != 0 {
        return Err(error(
            "RSV2 or RSV3 is set, and no extension that uses them was agreed",
        ));
    }
    let opcode = b0 & 0x0f;
    if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
        return Err(error("a reserved opcode"));
    }
    let masked = b1 & 0x80 != 0;
    if masked != (way == Way::ToUpstream) {
        return Err(error(if masked {
            "a masked frame from a server"
        } else {
            "an unmasked frame from a client"
        }));
    }
    let (len, mut size) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().expect("eight bytes"));
                if len >> 63 != 0 {
                    return Err(error("a length with its most significant bit set"));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if masked {
        size += 4;
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    if masked {
        mask.copy_from_slice(&buf[size - 4..size]);
    }
    let head = Head {
        fin: b0 & 0x80 != 0,
        rsv1: b0 & 0x40 != 0,
        opcode,
        masked,
        mask,
        len,
        size,
    };
    if head.is_control() && (!head.fin || head.len > 125) {
        return Err(error("a fragmented or longer than 125 bytes control frame"));
    }
    Ok(Some(head))
}

/// A close frame with `code` and `reason`, masked with a fresh key when it
/// goes to the upstream.
pub fn close_frame(code: u16, reason: &str, way: Way) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    let mut frame = vec![0x80 | CLOSE, payload.len() as u8];
    if way == Way::ToUpstream {
        let mut key = [0u8; 4];
        getrandom::fill(&mut key).expect("the system has randomness");
        frame[1] |= 0x80;
        frame.extend_from_slice(&key);
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= key[i % 4];
        }
    }
    frame.extend_from_slice(&payload);
    frame
}
