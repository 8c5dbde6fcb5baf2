//! Who is at the other end of a connection: the uid of a Unix-socket peer
//! (from the kernel's peer credentials) and, on Linux, of a loopback TCP
//! client (from the kernel's socket table), so that the socket API and the
//! forwarder serve only the user running the daemon, and root.

use std::io;
use std::net::SocketAddr;

use tokio::net::UnixStream;

/// Whether a peer running as `uid` may use the daemon.
pub fn allowed(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// The uid of the process at the other end of `stream`.
pub fn unix_peer_uid(stream: &UnixStream) -> io::Result<u32> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let cred =
            nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
        Ok(cred.uid())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let (uid, _gid) = nix::unistd::getpeereid(stream)?;
        Ok(uid.as_raw())
    }
}

/// The uid owning the TCP socket that connected from `peer` to our `local`
/// address, where the system can tell (Linux); `None` elsewhere.
///
/// The kernel is asked through sock_diag netlink for exactly that socket;
/// where netlink is not allowed, `/proc/net/tcp` (or `tcp6`) is searched for
/// the port pair.
pub fn tcp_peer_uid(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<u32>> {
    #[cfg(target_os = "linux")]
    {
        match linux::sock_diag_uid(local, peer) {
            Ok(uid) => Ok(Some(uid)),
            Err(e) if linux::netlink_unavailable(&e) => linux::proc_net_uid(local, peer).map(Some),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (local, peer);
        Ok(None)
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{self, Read};
    use std::net::{IpAddr, SocketAddr};
    use std::os::fd::AsRawFd;

    use nix::errno::Errno;
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        setsockopt, socket, sockopt,
    };
    use nix::sys::time::TimeVal;

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_HEADER: usize = 16;
    /// Offset of `idiag_uid` in `struct inet_diag_msg`.
    const UID_OFFSET: usize = 4 + 48 + 12;
    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;
    const IPPROTO_TCP: u8 = 6;
    /// The most `/proc/net/tcp` read: about 40,000 sockets.
    const PROC_NET_CAP: u64 = 8 << 20;

    /// Whether `e` means netlink cannot be used here (a sandbox that
    /// forbids the address family, a kernel without sock_diag).
    pub fn netlink_unavailable(e: &io::Error) -> bool {
        e.raw_os_error().map(Errno::from_raw).is_some_and(|errno| {
            matches!(
                errno,
                Errno::EAFNOSUPPORT | Errno::EPROTONOSUPPORT | Errno::EPERM | Errno::EACCES
            )
        })
    }

    /// The 16 address bytes `inet_diag_sockid` holds for `ip`.
    fn address_bytes(ip: IpAddr) -> [u8; 16] {
        let mut out = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
        }
        out
    }

    /// A `SOCK_DIAG_BY_FAMILY` request for the one TCP socket bound to
    /// `source` and connected to `destination`.
    fn request(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
        let family = if source.is_ipv4() { AF_INET } else { AF_INET6 };
        let mut msg = Vec::with_capacity(72);
        msg.extend_from_slice(&72u32.to_ne_bytes());
        msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        msg.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
        msg.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
        msg.extend_from_slice(&source.port().to_be_bytes());
        msg.extend_from_slice(&destination.port().to_be_bytes());
        msg.extend_from_slice(&address_bytes(source.ip()));
        msg.extend_from_slice(&address_bytes(destination.ip()));
        msg.extend_from_slice(&0u32.to_ne_bytes()); // any interface
        msg.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
        msg.extend_from_slice(&u32::MAX.to_ne_bytes());
        debug_assert_eq!(msg.len(), 72);
        msg
    }

    /// The uid in a sock_diag answer, or the error the kernel sent.
    pub(super) fn parse_answer(answer: &[u8]) -> io::Result<u32> {
        let field = |at: usize| -> io::Result<[u8; 4]> {
            answer
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| io::Error::other("a short sock_diag answer"))
        };
        let kind = answer
            .get(4..6)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or_else(|| io::Error::other("a short sock_diag answer"))?;
        if kind == NLMSG_ERROR {
            let code = i32::from_ne_bytes(field(NLMSG_HEADER)?);
            return Err(io::Error::from_raw_os_error(code.saturating_neg()));
        }
        if kind != SOCK_DIAG_BY_FAMILY {
            return Err(io::Error::other(format!(
                "an unexpected sock_diag answer type {kind}"
            )));
        }
        Ok(u32::from_ne_bytes(field(NLMSG_HEADER + UID_OFFSET)?))
    }

    /// The uid owning the client socket, asked of sock_diag.
    pub fn sock_diag_uid(local: SocketAddr, peer: SocketAddr) -> io::Result<u32> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(1, 0))?;
        let kernel = NetlinkAddr::new(0, 0);
        sendto(
            fd.as_raw_fd(),
            &request(peer, local),
            &kernel,
            MsgFlags::empty(),
        )?;
        let mut answer = [0u8; 512];
        let n = recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty())?;
        parse_answer(&answer[..n])
    }

    /// The uid owning the client socket, found in `/proc/net/tcp{,6}`.
    pub fn proc_net_uid(local: SocketAddr, peer: SocketAddr) -> io::Result<u32> {
        let path = if peer.is_ipv4() {
            "/proc/net/tcp"
        } else {
            "/proc/net/tcp6"
        };
        let mut table = String::new();
        std::fs::File::open(path)?
            .take(PROC_NET_CAP)
            .read_to_string(&mut table)?;
        find_in_table(&table, peer, local).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no socket from {peer} to {local} in {path}"),
            )
        })
    }

    /// `ip:port` as `/proc/net/tcp` prints it: each 32-bit word of the
    /// address in the machine's byte order, then the port, in hex.
    fn proc_address(addr: SocketAddr) -> String {
        let bytes = address_bytes(addr.ip());
        let words = if addr.is_ipv4() { 1 } else { 4 };
        let mut out = String::with_capacity(45);
        for word in bytes.chunks(4).take(words) {
            let value = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
            out.push_str(&format!("{value:08X}"));
        }
        out.push_str(&format!(":{:04X}", addr.port()));
        out
    }

    /// The uid column of the row whose local address is `source` and whose
    /// remote address is `destination`.
    pub(super) fn find_in_table(
        table: &str,
        source: SocketAddr,
        destination: SocketAddr,
    ) -> Option<u32> {
        let (source, destination) = (proc_address(source), proc_address(destination));
        table.lines().skip(1).find_map(|line| {
            let mut fields = line.split_whitespace();
            let (local, remote) = (fields.nth(1)?, fields.next()?);
            if !local.eq_ignore_ascii_case(&source) || !remote.eq_ignore_ascii_case(&destination) {
                return None;
            }
            // st, tx:rx, tr:when, retransmits, then uid.
            fields.nth(4)?.parse().ok()
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::linux::{find_in_table, parse_answer};
    use super::*;

    #[test]
    fn a_loopback_client_is_found_as_ourselves() {
        for address in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = std::net::TcpListener::bind(address) else {
                assert!(address.starts_with('['), "{address} cannot be bound");
                continue; // a machine without IPv6
            };
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (_server, peer) = listener.accept().unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            let me = nix::unistd::geteuid().as_raw();
            let local = listener.local_addr().unwrap();
            assert_eq!(tcp_peer_uid(local, peer).unwrap(), Some(me), "{address}");
            assert_eq!(linux::proc_net_uid(local, peer).unwrap(), me, "{address}");
        }
    }

    #[test]
    fn a_socket_that_is_gone_is_an_error() {
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert!(tcp_peer_uid(local, peer).is_err());
    }

    #[test]
    fn proc_net_rows_are_matched_by_both_ends() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:9C40 0100007F:05B8 01 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 20 4 30 10 -1\n\
   1: 0100007F:05B8 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let server: SocketAddr = "127.0.0.1:1464".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(find_in_table(table, client, server), Some(1000));
            assert_eq!(find_in_table(table, server, client), Some(0));
        }
        assert_eq!(find_in_table(table, client, client), None);
        assert_eq!(find_in_table("header only\n", client, server), None);
    }

    #[test]
    fn short_or_foreign_answers_are_errors() {
        assert!(parse_answer(&[]).is_err());
        assert!(parse_answer(&[0; 8]).is_err());
        let mut error = vec![0u8; 20];
        error[4..6].copy_from_slice(&2u16.to_ne_bytes());
        error[16..20].copy_from_slice(&(-2i32).to_ne_bytes());
        let e = parse_answer(&error).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(2));
    }
}
