//! The relay of WebSocket frames between a client and the upstream.
//!
//! Frames pass byte for byte: the client's masked frames go upstream as
//! the client masked them, the upstream's frames go to the client as sent,
//! compressed or not, as soon as their bytes arrive; no message is
//! assembled to be passed on. The relay walks each way's frames
//! ([`Frames`]) to know where frames begin (so that it can add a close
//! frame of its own at a frame boundary on shutdown or idleness) and to
//! refuse what the protocol forbids. The upstream's text messages go to an
//! observer ([`Messages`]) that learns quota and limits from them; the
//! client's, when wanted, to another (keep-warm keeps its requests).

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::wire::ws_frame::{
    BAD_GATEWAY, GOING_AWAY, PROTOCOL_ERROR, ProtocolError, Way, close_frame,
};
use crate::wire::ws_message::{Deflate, Messages, Observer};
use crate::wire::ws_walk::Frames;

/// Bytes read at once from either side while frames keep coming.
const READ_CHUNK: usize = 8 * 1024;
/// Bytes read at once after a pause: a connection that waits for its next
/// frame holds no larger buffer.
const IDLE_CHUNK: usize = 512;
/// How long the other side may stay open once one side has closed.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long a peer has to answer a close frame the relay sent.
const CLOSE_ANSWER: Duration = Duration::from_secs(1);
/// How long the connections stay once close frames went both ways, for
/// the sides to hang up themselves.
const HANDSHAKE_GRACE: Duration = Duration::from_secs(1);

/// One way of the relay: reads frames from `from`, writes them to `to`.
struct Pump<R, W> {
    from: R,
    to: W,
    way: Way,
    buf: Vec<u8>,
    frames: Frames,
    /// Whether everything written to `to` ends at a frame boundary.
    clean: bool,
    /// Whether the relay sent a close frame of its own.
    sent_close: bool,
    /// Whether the last read filled its buffer: more is likely waiting.
    busy: bool,
    /// Whether this way's close frame was passed on and told to `Activity`.
    close_passed: bool,
}

/// Why a pump stopped.
#[derive(Debug)]
enum PumpEnd {
    /// The sender closed its connection after a whole frame.
    Eof,
    Io(std::io::Error),
    Truncated,
    Protocol(ProtocolError),
}

impl<R, W> Pump<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    fn new(from: R, to: W, way: Way, frames: Frames) -> Self {
        Pump {
            from,
            to,
            way,
            buf: Vec::new(),
            frames,
            clean: true,
            sent_close: false,
            busy: false,
            close_passed: false,
        }
    }

    /// Passes frames until the sender stops or breaks the protocol.
    async fn run(&mut self, activity: &Activity) -> PumpEnd {
        loop {
            match self.fill().await {
                Ok(0) => {
                    return if self.frames.at_boundary() && self.buf.is_empty() {
                        let _ = self.to.shutdown().await;
                        PumpEnd::Eof
                    } else {
                        PumpEnd::Truncated
                    };
                }
                Ok(_) => {}
                Err(e) => return PumpEnd::Io(e),
            }
            activity.touch();
            let consumed = match self.frames.walk(&self.buf) {
                Ok(n) => n,
                Err(e) => return PumpEnd::Protocol(e),
            };
            if consumed > 0 {
                self.clean = false;
                let written = async {
                    self.to.write_all(&self.buf[..consumed]).await?;
                    self.to.flush().await
                };
                if let Err(e) = written.await {
                    return PumpEnd::Io(e);
                }
                self.buf.drain(..consumed);
                self.clean = self.frames.at_boundary();
                if self.frames.closed() && !self.close_passed {
                    self.close_passed = true;
                    activity.close_passed();
                }
            }
            if self.buf.is_empty() && !self.busy {
                self.buf = Vec::new();
            }
        }
    }

    /// Reads what the sender has sent: into a small buffer after a pause,
    /// in larger chunks while the reads keep filling their buffers.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.busy {
            self.buf.reserve(READ_CHUNK);
            let n = self.from.read_buf(&mut self.buf).await?;
            self.busy = n >= READ_CHUNK;
            return Ok(n);
        }
        let mut first = [0u8; IDLE_CHUNK];
        let n = self.from.read(&mut first).await?;
        self.buf.extend_from_slice(&first[..n]);
        self.busy = n == IDLE_CHUNK;
        Ok(n)
    }

    /// Sends a close frame of the relay's own, where the stream is at a
    /// frame boundary and no close frame went this way yet.
    async fn close(&mut self, code: u16, reason: &str) {
        if self.clean && !self.sent_close && !self.frames.closed() {
            self.sent_close = true;
            let frame = close_frame(code, reason, self.way);
            let _ = self.to.write_all(&frame).await;
            let _ = self.to.flush().await;
        }
    }

    /// Waits a moment for the sender to answer a close and hang up.
    async fn await_hang_up(&mut self) {
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(CLOSE_ANSWER, async {
            while matches!(self.from.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        let _ = self.to.shutdown().await;
    }
}

/// When a frame last moved, for the idle timeout, and how many ways passed
/// a close frame on, for the end of the close handshake.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    closes: AtomicU8,
    closed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            closes: AtomicU8::new(0),
            closed: Notify::new(),
        }
    }

    fn close_passed(&self) {
        self.closes.fetch_add(1, Ordering::Relaxed);
        self.closed.notify_waiters();
    }

    /// Resolves [`HANDSHAKE_GRACE`] after close frames went both ways.
    async fn handshake_done(&self) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.closes.load(Ordering::Relaxed) >= 2 {
                break;
            }
            notified.await;
        }
        tokio::time::sleep(HANDSHAKE_GRACE).await;
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle`.
    async fn idle(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// How a relayed connection ended.
#[derive(Debug)]
pub enum Ended {
    /// Both sides closed (or one did and the other followed).
    Closed,
    /// Nothing moved for the idle timeout; both sides got a close frame.
    Idle,
    /// The daemon is stopping; both sides got a close frame.
    Stopped,
    /// A side broke the protocol; it got a close frame saying so.
    Protocol(ProtocolError),
    /// A side's connection broke; the text says how.
    Broken(String),
}

/// What the relay needs besides the two connections.
pub struct Relay {
    pub deflate: Option<Deflate>,
    pub idle: Duration,
    pub stop: CancellationToken,
    pub observer: Observer,
    /// Takes the client's text messages up to a cap, when some part wants
    /// them.
    pub requests: Option<(usize, Observer)>,
}

impl Relay {
    /// Relays frames between `client` and `upstream` until both close,
    /// one breaks, the connection idles or the daemon stops.
    pub async fn run<C, U>(self, client: C, upstream: U) -> Ended
    where
        C: AsyncRead + AsyncWrite + Send,
        U: AsyncRead + AsyncWrite + Send,
    {
        let (client_read, client_write) = tokio::io::split(client);
        let (upstream_read, upstream_write) = tokio::io::split(upstream);
        // Both ways are held to the protocol; the upstream's messages are
        // read, the client's when they are wanted.
        let deflate = self.deflate.is_some();
        let messages = Messages::new(self.deflate, self.observer);
        let requests = self
            .requests
            .map(|(cap, observer)| Messages::of_client(self.deflate, cap, observer));
        let up_frames = Frames::new(Way::ToUpstream, deflate, requests);
        let down_frames = Frames::new(Way::ToClient, deflate, Some(messages));
        let mut up = Pump::new(client_read, upstream_write, Way::ToUpstream, up_frames);
        let mut down = Pump::new(upstream_read, client_write, Way::ToClient, down_frames);
        let activity = Activity::new();
        let ended = {
            let up_run = up.run(&activity);
            let down_run = down.run(&activity);
            tokio::pin!(up_run, down_run);
            let (mut up_end, mut down_end) = (None, None);
            loop {
                let either_done = up_end.is_some() || down_end.is_some();
                tokio::select! {
                    end = &mut up_run, if up_end.is_none() => up_end = Some(end),
                    end = &mut down_run, if down_end.is_none() => down_end = Some(end),
                    _ = self.stop.cancelled() => break Ended::Stopped,
                    _ = activity.idle(self.idle), if !either_done => break Ended::Idle,
                    _ = tokio::time::sleep(CLOSE_WAIT), if either_done => break Ended::Closed,
                    _ = activity.handshake_done() => break Ended::Closed,
                }
                match (up_end.take(), down_end.take()) {
                    (Some(PumpEnd::Eof), Some(PumpEnd::Eof)) => break Ended::Closed,
                    (Some(PumpEnd::Protocol(e)), _) | (_, Some(PumpEnd::Protocol(e))) => {
                        break Ended::Protocol(e);
                    }
                    (Some(end @ (PumpEnd::Io(_) | PumpEnd::Truncated)), _) => {
                        break Ended::Broken(format!("the client's connection broke: {end}"));
                    }
                    (_, Some(end @ (PumpEnd::Io(_) | PumpEnd::Truncated))) => {
                        break Ended::Broken(format!("the upstream's connection broke: {end}"));
                    }
                    (up, down) => (up_end, down_end) = (up, down),
                }
            }
        };
        // Each side learns why the relay ends it, where its stream is at a
        // frame boundary: the side that broke the protocol that it did,
        // the other that its peer went wrong.
        let (to_upstream, to_client) = match &ended {
            Ended::Idle => (Some((GOING_AWAY, "idle")), Some((GOING_AWAY, "idle"))),
            Ended::Stopped => {
                let why = (GOING_AWAY, "codex-broker is stopping");
                (Some(why), Some(why))
            }
            Ended::Protocol(e) if e.way == Way::ToUpstream => (
                Some((GOING_AWAY, "the client broke the protocol")),
                Some((PROTOCOL_ERROR, e.why)),
            ),
            Ended::Protocol(e) => (
                Some((PROTOCOL_ERROR, e.why)),
                Some((BAD_GATEWAY, "the upstream broke the protocol")),
            ),
            Ended::Closed | Ended::Broken(_) => (None, None),
        };
        if let (Some((up_code, up_reason)), Some((down_code, down_reason))) =
            (to_upstream, to_client)
        {
            up.close(up_code, up_reason).await;
            down.close(down_code, down_reason).await;
            tokio::join!(up.await_hang_up(), down.await_hang_up());
        }
        ended
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Closed => f.write_str("closed"),
            Ended::Idle => f.write_str("closed after idling"),
            Ended::Stopped => f.write_str("closed as the daemon stops"),
            Ended::Protocol(e) => write!(f, "{e}"),
            Ended::Broken(why) => f.write_str(why),
        }
    }
}

impl std::fmt::Display for PumpEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PumpEnd::Eof => f.write_str("closed"),
            PumpEnd::Io(e) => write!(f, "{e}"),
            PumpEnd::Truncated => f.write_str("closed in the middle of a frame"),
            PumpEnd::Protocol(e) => write!(f, "{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use flate2::{Compress, Compression, FlushCompress};
    use tokio::io::DuplexStream;

    use super::*;
    use crate::wire::ws_frame::{BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};
    use crate::wire::ws_message::{DEFLATE_TAIL, INSPECT_CAP};

    /// The longest client message the tests' observer takes.
    const REQUEST_CAP: usize = 64;

    /// A frame as the upstream (unmasked) or a client (masked) sends it.
    fn frame(first: u8, payload: &[u8], way: Way) -> Vec<u8> {
        let mut out = vec![first];
        let mask_bit = if way == Way::ToUpstream { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if way == Way::ToUpstream {
            let key = [0x12, 0x34, 0x56, 0x78];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    /// One message compressed as a permessage-deflate sender does.
    fn deflated(compressor: &mut Compress, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() + 64);
        compressor
            .compress_vec(text.as_bytes(), &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&DEFLATE_TAIL));
        out.truncate(out.len() - 4);
        out
    }

    struct Harness {
        /// The client's end: write masked frames, read what the relay passes.
        client: DuplexStream,
        upstream: DuplexStream,
        seen: Arc<Mutex<Vec<String>>>,
        /// The client's messages, up to [`REQUEST_CAP`] bytes.
        requests: Arc<Mutex<Vec<String>>>,
        stop: CancellationToken,
        relay: tokio::task::JoinHandle<Ended>,
    }

    fn harness(deflate: Option<Deflate>, idle: Duration) -> Harness {
        let (client, client_side) = tokio::io::duplex(64 * 1024);
        let (upstream, upstream_side) = tokio::io::duplex(64 * 1024);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let recorder = |into: &Arc<Mutex<Vec<String>>>| -> Observer {
            let into = into.clone();
            Box::new(move |text| {
                into.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(text).into_owned());
            })
        };
        let relay = Relay {
            deflate,
            idle,
            stop: stop.clone(),
            observer: recorder(&seen),
            requests: Some((REQUEST_CAP, recorder(&requests))),
        };
        Harness {
            client,
            upstream,
            seen,
            requests,
            stop,
            relay: tokio::spawn(relay.run(client_side, upstream_side)),
        }
    }

    async fn read_exactly(from: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        from.read_exact(&mut buf).await.unwrap();
        buf
    }

    async fn read_to_end(from: &mut DuplexStream) -> Vec<u8> {
        let mut buf = Vec::new();
        from.read_to_end(&mut buf).await.unwrap();
        buf
    }

    /// The close code and reason of a close frame (unmasking it).
    fn close_of(bytes: &[u8]) -> (u16, String) {
        assert_eq!(bytes[0], 0x80 | CLOSE, "{bytes:?}");
        let len = (bytes[1] & 0x7f) as usize;
        let mut payload = if bytes[1] & 0x80 != 0 {
            let key = &bytes[2..6];
            bytes[6..6 + len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect::<Vec<_>>()
        } else {
            bytes[2..2 + len].to_vec()
        };
        let reason = String::from_utf8(payload.split_off(2)).unwrap();
        (u16::from_be_bytes([payload[0], payload[1]]), reason)
    }

    #[tokio::test]
    async fn frames_pass_byte_for_byte_both_ways_as_they_arrive() {
        let mut h = harness(None, Duration::from_secs(60));
        // A client message in two fragments with a ping between, written
        // one byte at a time.
        let mut sent = frame(TEXT, b"{\"type\":\"response.create\",", Way::ToUpstream);
        sent.extend(frame(0x80 | PING, b"p", Way::ToUpstream));
        sent.extend(frame(
            0x80 | CONTINUATION,
            b"\"input\":[]}",
            Way::ToUpstream,
        ));
        sent.extend(frame(0x80 | BINARY, &[0u8, 1, 2, 255], Way::ToUpstream));
        for byte in &sent {
            h.client.write_all(&[*byte]).await.unwrap();
        }
        assert_eq!(read_exactly(&mut h.upstream, sent.len()).await, sent);
        // The client's text message is observed unmasked and whole.
        assert_eq!(
            *h.requests.lock().unwrap(),
            ["{\"type\":\"response.create\",\"input\":[]}"]
        );

        // Upstream events, one of them long enough for a 16-bit length,
        // arrive whole at the client, and each text message is observed.
        let long = format!(
            "{{\"type\":\"response.output_text.delta\",\"delta\":\"{}\"}}",
            "x".repeat(70_000)
        );
        let mut events = frame(
            0x80 | TEXT,
            b"{\"type\":\"response.created\"}",
            Way::ToClient,
        );
        events.extend(frame(0x80 | PONG, b"p", Way::ToClient));
        events.extend(frame(0x80 | TEXT, long.as_bytes(), Way::ToClient));
        h.upstream.write_all(&events).await.unwrap();
        assert_eq!(read_exactly(&mut h.client, events.len()).await, events);
        let seen = h.seen.lock().unwrap().clone();
        assert_eq!(seen, ["{\"type\":\"response.created\"}".to_owned(), long]);

        // The upstream closes with its own code; the client answers and both
        // hang up.
        let close = frame(0x80 | CLOSE, b"\x0f\xa1bye", Way::ToClient);
        h.upstream.write_all(&close).await.unwrap();
        h.upstream.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut h.client).await, close);
        let answer = frame(0x80 | CLOSE, b"\x0f\xa1", Way::ToUpstream);
        h.client.write_all(&answer).await.unwrap();
        h.client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut h.upstream).await, answer);
        assert!(matches!(h.relay.await.unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn compressed_messages_are_read_with_the_shared_window() {
        let mut h = harness(Some(Deflate::default()), Duration::from_secs(60));
        let mut compressor = Compress::new(Compression::default(), false);
        let rate_limits =
            r#"{"type":"codex.rate_limits","rate_limits":{"primary":{"used_percent":42.0}}}"#;
        let first = deflated(&mut compressor, rate_limits);
        let binary = deflated(&mut compressor, "binary");
        // The same text again compresses to a back-reference into the
        // window the first message left.
        let second = deflated(&mut compressor, rate_limits);
        assert!(second.len() < first.len() / 2);
        let (a, b) = first.split_at(first.len() / 2);
        let mut sent = frame(0x40 | TEXT, a, Way::ToClient);
        sent.extend(frame(0x80 | CONTINUATION, b, Way::ToClient));
        sent.extend(frame(0x80 | 0x40 | BINARY, &binary, Way::ToClient));
        sent.extend(frame(0x80 | 0x40 | TEXT, &second, Way::ToClient));
        h.upstream.write_all(&sent).await.unwrap();
        assert_eq!(read_exactly(&mut h.client, sent.len()).await, sent);
        assert_eq!(*h.seen.lock().unwrap(), [rate_limits, rate_limits]);
        h.stop.cancel();
        assert!(matches!(h.relay.await.unwrap(), Ended::Stopped));
    }

    #[tokio::test]
    async fn the_clients_compressed_messages_are_read_with_their_own_window_and_cap() {
        for client_no_context_takeover in [false, true] {
            let deflate = Deflate {
                server_no_context_takeover: false,
                client_no_context_takeover,
            };
            let mut h = harness(Some(deflate), Duration::from_secs(60));
            let mut compressor = Compress::new(Compression::default(), false);
            let text = r#"{"type":"response.create","input":[]}"#;
            let mut sent = Vec::new();
            for _ in 0..2 {
                if client_no_context_takeover {
                    compressor.reset();
                }
                let (a, b) = {
                    let compressed = deflated(&mut compressor, text);
                    let (a, b) = compressed.split_at(compressed.len() / 2);
                    (a.to_vec(), b.to_vec())
                };
                sent.extend(frame(0x40 | TEXT, &a, Way::ToUpstream));
                sent.extend(frame(0x80 | CONTINUATION, &b, Way::ToUpstream));
            }
            // Past the cap: passed on, not observed.
            let long = format!("{{\"pad\":\"{}\"}}", "q".repeat(REQUEST_CAP));
            sent.extend(frame(0x80 | TEXT, long.as_bytes(), Way::ToUpstream));
            sent.extend(frame(0x80 | TEXT, b"{}", Way::ToUpstream));
            let writer = async { h.client.write_all(&sent).await.unwrap() };
            let (_, got) = tokio::join!(writer, read_exactly(&mut h.upstream, sent.len()));
            assert_eq!(got, sent);
            assert_eq!(*h.requests.lock().unwrap(), [text, text, "{}"]);
            assert!(h.seen.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn without_context_takeover_every_message_starts_afresh() {
        let deflate = Deflate {
            server_no_context_takeover: true,
            client_no_context_takeover: false,
        };
        let mut h = harness(Some(deflate), Duration::from_secs(60));
        let mut sent = Vec::new();
        for text in [r#"{"type":"a"}"#, r#"{"type":"a"}"#] {
            let mut compressor = Compress::new(Compression::default(), false);
            sent.extend(frame(
                0x80 | 0x40 | TEXT,
                &deflated(&mut compressor, text),
                Way::ToClient,
            ));
        }
        h.upstream.write_all(&sent).await.unwrap();
        assert_eq!(read_exactly(&mut h.client, sent.len()).await, sent);
        assert_eq!(h.seen.lock().unwrap().len(), 2);
        assert_eq!(h.seen.lock().unwrap()[1], r#"{"type":"a"}"#);
    }

    #[tokio::test]
    async fn a_message_past_the_cap_is_passed_but_not_observed() {
        let mut h = harness(Some(Deflate::default()), Duration::from_secs(60));
        let mut compressor = Compress::new(Compression::default(), false);
        let huge = format!(
            "{{\"type\":\"error\",\"pad\":\"{}\"}}",
            "z".repeat(INSPECT_CAP * 4)
        );
        let mut sent = frame(
            0x80 | 0x40 | TEXT,
            &deflated(&mut compressor, &huge),
            Way::ToClient,
        );
        sent.extend(frame(
            0x80 | 0x40 | TEXT,
            &deflated(&mut compressor, "{\"type\":\"b\"}"),
            Way::ToClient,
        ));
        let mut plain = "y".repeat(INSPECT_CAP + 1).into_bytes();
        plain.insert(0, b'"');
        sent.extend(frame(0x80 | TEXT, &plain, Way::ToClient));
        sent.extend(frame(0x80 | TEXT, b"{}", Way::ToClient));
        let writer = async { h.upstream.write_all(&sent).await.unwrap() };
        let (_, got) = tokio::join!(writer, read_exactly(&mut h.client, sent.len()));
        assert_eq!(got, sent);
        assert_eq!(*h.seen.lock().unwrap(), ["{\"type\":\"b\"}", "{}"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_breaking_the_protocol_is_told_and_the_upstream_let_go() {
        let mut h = harness(None, Duration::from_secs(60));
        // Unmasked: a client must mask every frame.
        h.client
            .write_all(&frame(0x80 | TEXT, b"hi", Way::ToClient))
            .await
            .unwrap();
        let to_client = read_to_end(&mut h.client).await;
        assert_eq!(close_of(&to_client).0, PROTOCOL_ERROR);
        let to_upstream = read_to_end(&mut h.upstream).await;
        assert_eq!(
            to_upstream[1] & 0x80,
            0x80,
            "the relay masks what it sends upstream"
        );
        assert_eq!(close_of(&to_upstream).0, GOING_AWAY);
        assert!(matches!(h.relay.await.unwrap(), Ended::Protocol(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_message_the_protocol_forbids_never_reaches_the_upstream() {
        let started = frame(TEXT, b"{\"type\":", Way::ToUpstream);
        for (before, bad, why) in [
            (
                vec![],
                frame(0x80 | 0x40 | TEXT, b"x", Way::ToUpstream),
                "RSV1",
            ),
            (
                vec![],
                frame(0x80 | CONTINUATION, b"x", Way::ToUpstream),
                "continuation",
            ),
            (
                started,
                frame(0x80 | TEXT, b"x", Way::ToUpstream),
                "a new message",
            ),
        ] {
            let mut h = harness(None, Duration::from_secs(60));
            h.client.write_all(&before).await.unwrap();
            assert_eq!(read_exactly(&mut h.upstream, before.len()).await, before);
            h.client.write_all(&bad).await.unwrap();
            let to_client = read_to_end(&mut h.client).await;
            let (code, reason) = close_of(&to_client);
            assert_eq!(code, PROTOCOL_ERROR, "{why}");
            assert!(reason.contains(why), "{reason}");
            // The upstream gets the relay's close, not the frame.
            let to_upstream = read_to_end(&mut h.upstream).await;
            assert_eq!(close_of(&to_upstream).0, GOING_AWAY, "{why}");
            assert!(matches!(h.relay.await.unwrap(), Ended::Protocol(_)));
        }
        // With permessage-deflate agreed, a compressed client message passes.
        let mut h = harness(Some(Deflate::default()), Duration::from_secs(60));
        let compressed = frame(0x80 | 0x40 | TEXT, &[0x02, 0x00], Way::ToUpstream);
        h.client.write_all(&compressed).await.unwrap();
        assert_eq!(
            read_exactly(&mut h.upstream, compressed.len()).await,
            compressed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_completed_close_handshake_ends_the_relay_though_nobody_hangs_up() {
        let mut h = harness(None, Duration::from_secs(1800));
        let close = frame(0x80 | CLOSE, b"\x03\xe8", Way::ToUpstream);
        h.client.write_all(&close).await.unwrap();
        assert_eq!(read_exactly(&mut h.upstream, close.len()).await, close);
        let answer = frame(0x80 | CLOSE, b"\x03\xe8", Way::ToClient);
        h.upstream.write_all(&answer).await.unwrap();
        assert_eq!(read_exactly(&mut h.client, answer.len()).await, answer);
        // Neither side closes its connection: the relay lets both go after
        // the grace, long before the idle timeout.
        let ended = tokio::time::timeout(Duration::from_secs(5), h.relay)
            .await
            .expect("the relay ends after the handshake");
        assert!(matches!(ended.unwrap(), Ended::Closed));
        assert!(read_to_end(&mut h.client).await.is_empty());
        assert!(read_to_end(&mut h.upstream).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_breaking_the_protocol_is_a_bad_gateway_for_the_client() {
        for bad in [
            frame(0x80 | TEXT, b"hi", Way::ToUpstream), // masked
            vec![0x83, 0x00],                           // reserved opcode
            vec![0x89, 126, 0, 200],                    // long ping
            vec![0x80 | 0x20 | TEXT, 0],                // RSV2
            vec![0x80 | 0x40 | TEXT, 0],                // RSV1 without deflate
            vec![0x80 | CONTINUATION, 0],               // continuation of nothing
            [vec![0x81, 127], u64::MAX.to_be_bytes().to_vec()].concat(),
        ] {
            let mut h = harness(None, Duration::from_secs(60));
            h.upstream.write_all(&bad).await.unwrap();
            let to_client = read_to_end(&mut h.client).await;
            assert_eq!(close_of(&to_client).0, BAD_GATEWAY, "{bad:?}");
            let to_upstream = read_to_end(&mut h.upstream).await;
            assert_eq!(close_of(&to_upstream).0, PROTOCOL_ERROR, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_sends_both_sides_a_close_at_a_frame_boundary_only() {
        let mut h = harness(None, Duration::from_secs(60));
        // Half of a frame reached the client: no close frame can follow it.
        let partial = frame(0x80 | TEXT, &[b'a'; 100], Way::ToClient);
        h.upstream.write_all(&partial[..40]).await.unwrap();
        assert_eq!(read_exactly(&mut h.client, 40).await, partial[..40]);
        h.stop.cancel();
        assert!(matches!(h.relay.await.unwrap(), Ended::Stopped));
        assert!(read_to_end(&mut h.client).await.is_empty());
        let to_upstream = read_to_end(&mut h.upstream).await;
        assert_eq!(
            close_of(&to_upstream),
            (GOING_AWAY, "codex-broker is stopping".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_on_both_sides() {
        let mut h = harness(None, Duration::from_secs(30));
        let started = tokio::time::Instant::now();
        // Traffic keeps it open.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            h.client
                .write_all(&frame(0x80 | PING, b"", Way::ToUpstream))
                .await
                .unwrap();
            read_exactly(&mut h.upstream, 6).await;
        }
        let to_client = read_to_end(&mut h.client).await;
        assert_eq!(close_of(&to_client), (GOING_AWAY, "idle".to_owned()));
        assert!(started.elapsed() >= Duration::from_secs(90));
        assert_eq!(close_of(&read_to_end(&mut h.upstream).await).0, GOING_AWAY);
        assert!(matches!(h.relay.await.unwrap(), Ended::Idle));
    }
}
