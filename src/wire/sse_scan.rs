//! A reader of an SSE stream as its bytes pass, in pieces of any size: it
//! hands each event's data to an observer and keeps nothing but the event
//! being read. An event larger than [`EVENT_CAP`] is skipped, not kept.

/// The largest event data the scanner holds (a `response.completed` event
/// repeats the whole answer; beyond this it is not read).
pub const EVENT_CAP: usize = 4 * 1024 * 1024;

/// Reads the events of one stream.
#[derive(Default)]
pub struct SseScan {
    /// The line being read.
    line: Vec<u8>,
    /// The data lines of the event being read, joined by `\n`.
    data: Vec<u8>,
    /// Whether the event being read grew past [`EVENT_CAP`].
    over: bool,
}

impl SseScan {
    /// Reads `bytes`, the next bytes of the stream; calls `event` with the
    /// data of each event they complete.
    pub fn feed(&mut self, bytes: &[u8], mut event: impl FnMut(&[u8])) {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            self.push_line_part(&rest[..end]);
            self.line_end(&mut event);
            rest = &rest[end + 1..];
        }
        self.push_line_part(rest);
    }

    fn push_line_part(&mut self, part: &[u8]) {
        if self.over || self.line.len() + part.len() > EVENT_CAP {
            self.over = true;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn line_end(&mut self, event: &mut impl FnMut(&[u8])) {
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        if line.is_empty() {
            if !self.over && !self.data.is_empty() {
                event(&self.data);
            }
            self.data.clear();
            self.over = false;
        } else if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if self.data.len() + value.len() + 1 > EVENT_CAP {
                self.over = true;
                self.data.clear();
            } else if !self.over {
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
            }
        }
        self.line.clear();
        if self.line.capacity() > 64 * 1024 {
            self.line = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(stream: &[u8], piece: usize) -> Vec<String> {
        let mut scan = SseScan::default();
        let mut seen = Vec::new();
        for chunk in stream.chunks(piece.max(1)) {
            scan.feed(chunk, |data| {
                seen.push(String::from_utf8_lossy(data).into_owned())
            });
        }
        seen
    }

    #[test]
    fn events_come_out_whole_in_any_pieces() {
        let stream =
            b"event: a\ndata: {\"x\":1}\n\n: comment\r\ndata: one\r\ndata:two\r\n\r\nid: 3\n\n";
        for piece in 1..stream.len() {
            assert_eq!(events(stream, piece), ["{\"x\":1}", "one\ntwo"], "{piece}");
        }
    }

    #[test]
    fn an_event_past_the_cap_is_skipped_and_the_next_read() {
        let mut stream = b"data: ".to_vec();
        stream.extend(std::iter::repeat_n(b'x', EVENT_CAP + 10));
        stream.extend_from_slice(b"\n\ndata: after\n\n");
        assert_eq!(events(&stream, 8192), ["after"]);
        // Many data lines that together pass the cap.
        let line = format!("data: {}\n", "y".repeat(1024 * 1024));
        let mut stream = line.repeat(5).into_bytes();
        stream.extend_from_slice(b"\ndata: next\n\n");
        assert_eq!(events(&stream, 100_000), ["next"]);
    }
}
