//! A reader of an SSE stream as its bytes pass, in pieces of any size: it
//! hands the data of each event of one kind to an observer and keeps
//! nothing else. Lines are read where they lie; only a line split between
//! two pieces, and the data of a wanted event, are copied. An event larger
//! than [`EVENT_CAP`] is skipped.

/// The largest event data the scanner holds (a `response.completed` event
/// repeats the whole answer; beyond this it is not read).
pub const EVENT_CAP: usize = 4 * 1024 * 1024;

/// Reads the events of one stream that `wanted` names.
pub struct SseScan {
    /// Every event is wanted.
    every: bool,
    /// The event type wanted: its `event:` field, or found in its data.
    wanted: &'static [u8],
    /// The start of a line the last piece ended in.
    line: Vec<u8>,
    /// The data lines of the event being read, joined by `\n`, once it is
    /// known to be wanted.
    data: Vec<u8>,
    /// Whether the event being read is wanted (by its `event:` field).
    named: bool,
    /// Whether the event being read grew past [`EVENT_CAP`].
    over: bool,
}

impl SseScan {
    pub fn new(wanted: &'static str) -> SseScan {
        SseScan {
            every: false,
            wanted: wanted.as_bytes(),
            line: Vec::new(),
            data: Vec::new(),
            named: false,
            over: false,
        }
    }

    /// A scanner that hands over the data of every event.
    pub fn every() -> SseScan {
        SseScan {
            every: true,
            ..SseScan::new("")
        }
    }

    /// Reads `bytes`, the next bytes of the stream; calls `event` with the
    /// data of each wanted event they complete.
    pub fn feed(&mut self, bytes: &[u8], mut event: impl FnMut(&[u8])) {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            if self.line.is_empty() {
                self.line_end(&rest[..end], &mut event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                append_capped(&mut line, &rest[..end], &mut self.over);
                self.line_end(&line, &mut event);
                line.clear();
                if line.capacity() <= 64 * 1024 {
                    self.line = line;
                }
            }
            rest = &rest[end + 1..];
        }
        append_capped(&mut self.line, rest, &mut self.over);
    }

    fn line_end(&mut self, line: &[u8], event: &mut impl FnMut(&[u8])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if !self.over && !self.data.is_empty() {
                event(&self.data);
            }
            self.data.clear();
            (self.named, self.over) = (false, false);
        } else if let Some(value) = field(line, b"event:") {
            self.named = self.every || value == self.wanted;
        } else if let Some(value) = field(line, b"data:") {
            let wanted =
                self.every || self.named || !self.data.is_empty() || contains(value, self.wanted);
            if wanted && !self.over {
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                append_capped(&mut self.data, value, &mut self.over);
            }
        }
    }
}

/// The value of `line` if it is the field `name`.
fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let value = line.strip_prefix(name)?;
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

/// Appends `bytes` to `to` unless that passes [`EVENT_CAP`], which sets
/// `over` and empties `to`.
fn append_capped(to: &mut Vec<u8>, bytes: &[u8], over: &mut bool) {
    if *over || to.len() + bytes.len() > EVENT_CAP {
        *over = true;
        to.clear();
    } else {
        to.extend_from_slice(bytes);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(stream: &[u8], piece: usize) -> Vec<String> {
        let mut scan = SseScan::new("done");
        let mut seen = Vec::new();
        for chunk in stream.chunks(piece.max(1)) {
            scan.feed(chunk, |data| {
                seen.push(String::from_utf8_lossy(data).into_owned())
            });
        }
        seen
    }

    #[test]
    fn every_event_comes_out_when_every_one_is_wanted() {
        let stream = b"event: a\ndata: 1\n\ndata: {\"x\":2}\n\n: c\n\ndata: 3\ndata: 4\n\n";
        for piece in 1..stream.len() {
            let mut scan = SseScan::every();
            let mut seen = Vec::new();
            for chunk in stream.chunks(piece) {
                scan.feed(chunk, |d| {
                    seen.push(String::from_utf8_lossy(d).into_owned())
                });
            }
            assert_eq!(seen, ["1", "{\"x\":2}", "3\n4"], "{piece}");
        }
    }

    #[test]
    fn wanted_events_come_out_whole_in_any_pieces() {
        let stream = b"event: other\ndata: {\"x\":1}\n\n: comment\r\nevent: done\r\ndata: one\r\n\
            data:two\r\n\r\ndata: {\"type\":\"done\"}\n\ndata: {\"type\":\"delta\"}\n\nid: 3\n\n";
        for piece in 1..stream.len() {
            assert_eq!(
                events(stream, piece),
                ["one\ntwo", "{\"type\":\"done\"}"],
                "{piece}"
            );
        }
    }

    #[test]
    fn an_event_past_the_cap_is_skipped_and_the_next_read() {
        let mut stream = b"event: done\ndata: ".to_vec();
        stream.extend(std::iter::repeat_n(b'x', EVENT_CAP + 10));
        stream.extend_from_slice(b"\n\nevent: done\ndata: after\n\n");
        assert_eq!(events(&stream, 8192), ["after"]);
        // Many data lines that together pass the cap.
        let line = format!("data: {}\n", "y".repeat(1024 * 1024));
        let mut stream = b"event: done\n".to_vec();
        stream.extend(line.repeat(5).into_bytes());
        stream.extend_from_slice(b"\nevent: done\ndata: next\n\n");
        assert_eq!(events(&stream, 100_000), ["next"]);
    }
}
