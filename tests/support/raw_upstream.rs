//! An upstream that speaks raw bytes: whatever a test scripts, HTTP or not,
//! to see what the forwarder makes of a broken or hostile server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What the server does after it has read a request head.
#[derive(Clone)]
pub enum Script {
    /// Sends these bytes and closes.
    Send(Vec<u8>),
    /// Sends these bytes, then resets the connection (RST, not FIN).
    SendThenReset(Vec<u8>),
    /// Sends these bytes, then `chunk` over and over until the peer goes.
    SendThenRepeat(Vec<u8>, Vec<u8>),
}

pub struct RawUpstream {
    url: String,
    connections: Arc<AtomicUsize>,
}

impl RawUpstream {
    pub fn start(script: Script) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counted.fetch_add(1, Ordering::SeqCst);
                let script = script.clone();
                std::thread::spawn(move || serve(stream, script));
            }
        });
        RawUpstream { url, connections }
    }

    /// The base URL to give the broker.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn serve(mut stream: TcpStream, script: Script) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    match script {
        Script::Send(bytes) => {
            let _ = stream.write_all(&bytes);
        }
        Script::SendThenReset(bytes) => {
            let _ = stream.write_all(&bytes);
            let _ = stream.flush();
            reset(&stream);
        }
        Script::SendThenRepeat(bytes, chunk) => {
            if stream.write_all(&bytes).is_err() {
                return;
            }
            while stream.write_all(&chunk).is_ok() {}
        }
    }
}

/// Closes `stream` with a reset: SO_LINGER with a zero timeout.
fn reset(stream: &TcpStream) {
    let _ = nix::sys::socket::setsockopt(
        stream,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}
