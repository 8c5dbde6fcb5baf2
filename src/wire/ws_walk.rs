//! A walker that follows a stream of WebSocket frames one way as its bytes
//! arrive, in pieces of any size: where each frame begins and ends, what
//! the protocol forbids, and the messages the frames carry.

use super::ws_frame::{CLOSE, CONTINUATION, Head, ProtocolError, Way, parse_head};
use super::ws_message::Messages;

/// Walks a stream of frames one way, as its bytes arrive: where each frame
/// begins and ends, what the protocol forbids, and (with [`Messages`]) the
/// messages the frames carry.
pub struct Frames {
    way: Way,
    /// Whether permessage-deflate was agreed (RSV1 may mark a message).
    deflate: bool,
    /// The frame being walked and the payload bytes it still has.
    current: Option<(Head, u64)>,
    /// Whether a message began and its last frame has not ended.
    in_message: bool,
    /// Whether a close frame went by.
    closed: bool,
    messages: Option<Messages>,
}

impl Frames {
    pub fn new(way: Way, deflate: bool, messages: Option<Messages>) -> Frames {
        Frames {
            way,
            deflate,
            current: None,
            in_message: false,
            closed: false,
            messages,
        }
    }

    /// A frame begins: refused when it cannot start or continue a message
    /// (RFC 6455 5.4, RFC 7692 6).
    fn frame_start(&mut self, head: &Head) -> Result<(), &'static str> {
        if head.is_control() {
            return if head.rsv1 {
                Err("RSV1 on a control frame")
            } else {
                Ok(())
            };
        }
        match (head.opcode, self.in_message) {
            (CONTINUATION, false) => Err("a continuation frame outside a message"),
            (CONTINUATION, true) if head.rsv1 => Err("RSV1 on a continuation frame"),
            (CONTINUATION, true) => Ok(()),
            (_, true) => Err("a new message before the last one ended"),
            _ if head.rsv1 && !self.deflate => Err("RSV1 without permessage-deflate agreed"),
            _ => {
                self.in_message = true;
                Ok(())
            }
        }
    }

    /// Walks `buf`, the bytes that follow those walked before: returns how
    /// many of them may be passed on (whole frames, and the part of the
    /// last frame that arrived). The rest, an incomplete head, is to be
    /// given again with the bytes that follow it.
    pub fn walk(&mut self, buf: &[u8]) -> Result<usize, ProtocolError> {
        let mut at = 0;
        loop {
            if let Some((head, left)) = self.current.as_mut() {
                let n = (*left).min((buf.len() - at) as u64) as usize;
                if let Some(messages) = self.messages.as_mut()
                    && !head.is_control()
                {
                    let mask = head.masked.then_some((head.mask, head.len - *left));
                    messages.payload(&buf[at..at + n], mask);
                }
                at += n;
                *left -= n as u64;
                if *left > 0 {
                    return Ok(at);
                }
                let head = *head;
                self.current = None;
                self.frame_end(&head);
                continue;
            }
            let Some(head) = parse_head(&buf[at..], self.way)? else {
                return Ok(at);
            };
            self.frame_start(&head)
                .map_err(|why| ProtocolError::new(self.way, why))?;
            if let Some(messages) = self.messages.as_mut() {
                messages.frame_start(&head);
            }
            at += head.size;
            self.current = Some((head, head.len));
        }
    }

    fn frame_end(&mut self, head: &Head) {
        if head.opcode == CLOSE {
            self.closed = true;
        } else if !head.is_control() && head.fin {
            self.in_message = false;
            if let Some(messages) = self.messages.as_mut() {
                messages.message_end();
            }
        }
    }

    /// Whether the bytes walked end at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.current.is_none()
    }

    /// Whether a close frame went by.
    pub fn closed(&self) -> bool {
        self.closed
    }
}
