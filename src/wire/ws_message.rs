//! The messages a stream of WebSocket frames carries: text messages put
//! back together from their frames, unmasked when a client sent them,
//! inflated when compressed (permessage-deflate, RFC 7692), and handed
//! whole, up to a cap ([`INSPECT_CAP`] for the upstream's), to an observer.

use flate2::{Decompress, FlushDecompress, Status};

use super::ws_frame::{CONTINUATION, Head, TEXT};

/// A text message longer than this is passed on but not looked into: the
/// events that carry quota and errors are small.
pub const INSPECT_CAP: usize = 256 * 1024;
/// The tail a permessage-deflate sender strips from every message.
pub const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// permessage-deflate as agreed in the handshake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deflate {
    /// The upstream starts every message with an empty window.
    pub server_no_context_takeover: bool,
    /// The client starts every message with an empty window.
    pub client_no_context_takeover: bool,
}

/// Takes each text message, unmasked and inflated, up to the cap.
pub type Observer = Box<dyn FnMut(&[u8]) + Send>;

/// The message the inspector is reading.
struct Reading {
    text: bool,
    compressed: bool,
    /// Whether it grew past [`INSPECT_CAP`].
    over: bool,
}

/// Reads the text messages of a stream of frames for an observer.
pub struct Messages {
    /// Every message starts with an empty window.
    fresh_window: bool,
    /// The longest message handed to the observer.
    cap: usize,
    inflater: Option<Decompress>,
    /// A masked frame's payload, unmasked.
    unmasked: Vec<u8>,
    message: Option<Reading>,
    text: Vec<u8>,
    observer: Observer,
}

impl Messages {
    /// The upstream's messages, up to [`INSPECT_CAP`] bytes each.
    pub fn new(deflate: Option<Deflate>, observer: Observer) -> Messages {
        let fresh_window = deflate.is_some_and(|d| d.server_no_context_takeover);
        Messages::reading(fresh_window, INSPECT_CAP, observer)
    }

    /// The client's (masked) messages, up to `cap` bytes each.
    pub fn of_client(deflate: Option<Deflate>, cap: usize, observer: Observer) -> Messages {
        let fresh_window = deflate.is_some_and(|d| d.client_no_context_takeover);
        Messages::reading(fresh_window, cap, observer)
    }

    fn reading(fresh_window: bool, cap: usize, observer: Observer) -> Messages {
        Messages {
            fresh_window,
            cap,
            inflater: None,
            unmasked: Vec::new(),
            message: None,
            text: Vec::new(),
            observer,
        }
    }

    /// A frame begins ([`super::ws_walk::Frames`] has checked that it may
    /// start or continue a message).
    pub(super) fn frame_start(&mut self, head: &Head) {
        if head.is_control() || head.opcode == CONTINUATION {
            return;
        }
        self.message = Some(Reading {
            text: head.opcode == TEXT,
            compressed: head.rsv1,
            over: false,
        });
    }

    /// Payload bytes of the current frame; a masked frame's come with its
    /// key and where in the payload they start.
    pub(super) fn payload(&mut self, bytes: &[u8], mask: Option<([u8; 4], u64)>) {
        let Some((key, offset)) = mask else {
            return self.plain_payload(bytes);
        };
        let mut unmasked = std::mem::take(&mut self.unmasked);
        unmasked.clear();
        let start = (offset % 4) as usize;
        unmasked.extend(
            bytes
                .iter()
                .zip(key.iter().cycle().skip(start))
                .map(|(b, k)| b ^ k),
        );
        self.plain_payload(&unmasked);
        if unmasked.capacity() <= 64 * 1024 {
            self.unmasked = unmasked;
        }
    }

    fn plain_payload(&mut self, bytes: &[u8]) {
        let cap = self.cap;
        let Some(Reading {
            text,
            compressed,
            over,
        }) = self.message.as_mut()
        else {
            return;
        };
        if *compressed {
            let keep = *text && !*over;
            let inflater = self.inflater.get_or_insert_with(|| Decompress::new(false));
            if !inflate(
                inflater,
                bytes,
                FlushDecompress::None,
                &mut self.text,
                keep,
                cap,
            ) {
                *over = true;
            }
        } else if *text && !*over {
            self.text.extend_from_slice(bytes);
        }
        if self.text.len() > cap {
            *over = true;
            self.text.clear();
        }
    }

    /// The message's last frame ended.
    pub(super) fn message_end(&mut self) {
        let Some(Reading {
            text,
            compressed,
            over,
        }) = self.message.take()
        else {
            return;
        };
        if compressed && let Some(inflater) = self.inflater.as_mut() {
            let keep = text && !over;
            let whole = inflate(
                inflater,
                &DEFLATE_TAIL,
                FlushDecompress::Sync,
                &mut self.text,
                keep,
                self.cap,
            );
            if !whole || self.fresh_window {
                inflater.reset(false);
            }
            if !whole {
                self.text.clear();
            }
        }
        if text && !over && self.text.len() <= self.cap && !self.text.is_empty() {
            (self.observer)(&self.text);
        }
        self.text.clear();
        if self.text.capacity() > 64 * 1024 {
            self.text = Vec::new();
        }
    }
}

/// Inflates `input`, appending up to `cap` bytes of what it gives to
/// `out` when `keep`, discarding the rest. Returns false when the
/// stream is broken (the observer then sees nothing of the message).
fn inflate(
    inflater: &mut Decompress,
    mut input: &[u8],
    flush: FlushDecompress,
    out: &mut Vec<u8>,
    keep: bool,
    cap: usize,
) -> bool {
    let mut chunk = [0u8; 8 * 1024];
    loop {
        let (read, written) = (inflater.total_in(), inflater.total_out());
        let status = match inflater.decompress(input, &mut chunk, flush) {
            Ok(status) => status,
            Err(_) => return false,
        };
        let used = (inflater.total_in() - read) as usize;
        let produced = (inflater.total_out() - written) as usize;
        input = &input[used..];
        if keep && out.len() <= cap {
            out.extend_from_slice(&chunk[..produced]);
        }
        // Output can lag behind the input taken: call again until neither
        // moves.
        if status == Status::StreamEnd || (used == 0 && produced == 0) {
            return true;
        }
    }
}
