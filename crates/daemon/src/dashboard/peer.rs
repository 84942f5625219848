//! Whose socket is at the other end of a dashboard connection: cookies are shared by every port
//! of 127.0.0.1, so a page served by another local user's server would be handed our session
//! cookie unless the dashboard refuses every connection that is not the daemon's own user's.
//! Linux tells a TCP socket's owner in /proc/net/tcp (no unsafe code, no new dependency).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// An IPv4 address and port as /proc/net/tcp prints them: the address is the 32-bit word as it
/// lies in memory, printed as a native-endian number (`0100007F` for 127.0.0.1 on x86), the port
/// as a number (`1F90` for 8080).
fn parse_addr(text: &str) -> Option<SocketAddrV4> {
    let (ip, port) = text.split_once(':')?;
    if ip.len() != 8 || port.len() != 4 {
        return None;
    }
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port))
}

/// The uid owning the socket whose local address is `local` and remote address is `remote`, in
/// the text of /proc/net/tcp (a header line, then `sl local rem st tx:rx tr:when retrnsmt uid
/// ...` a line). Malformed lines are skipped.
pub fn uid_in_proc_net_tcp(table: &str, local: SocketAddrV4, remote: SocketAddrV4) -> Option<u32> {
    table.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let _slot = f.next()?;
        let l = parse_addr(f.next()?)?;
        let r = parse_addr(f.next()?)?;
        if l != local || r != remote {
            return None;
        }
        // Skips st, tx_queue:rx_queue, tr:tm->when and retrnsmt: then comes the uid.
        f.nth(4)?.parse().ok()
    })
}

/// The uid owning the client socket of a connection from `peer` to our listener at `ours`
/// (both IPv4: the dashboard listens on 127.0.0.1 only). The client's socket is in the table
/// from the moment it connected, so this holds right after accept; `None` if it cannot be
/// found (no /proc, another network namespace, the client already gone): callers refuse then.
pub fn socket_uid(peer: SocketAddr, ours: SocketAddr) -> Option<u32> {
    let (SocketAddr::V4(peer), SocketAddr::V4(ours)) = (peer, ours) else {
        return None;
    };
    // /proc is in memory: reading it does not block the runtime for any time that matters.
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    uid_in_proc_net_tcp(&table, peer, ours)
}

/// The effective uid in the text of /proc/PID/status (`Uid:` real, effective, saved, fs).
pub fn euid_in_status(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The daemon's effective uid (from /proc, as the rest of this check; no unsafe code). Read
/// once: the daemon does not change user.
pub fn effective_uid() -> Option<u32> {
    static EUID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *EUID.get_or_init(|| euid_in_status(&std::fs::read_to_string("/proc/self/status").ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

    fn v4(a: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(a), port)
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn the_dashboard_reads_loopback_addresses_in_the_kernels_byte_order() {
        assert_eq!(
            parse_addr("0100007F:1F90"),
            Some(v4([127, 0, 0, 1], 8080)),
            "127.0.0.1 is printed low byte first on a little-endian machine"
        );
        assert_eq!(parse_addr("7F000001:1F90"), Some(v4([1, 0, 0, 127], 8080)));
        for bad in ["0100007F", "0100007F:1F9", "0100007G:1F90", "", ":"] {
            assert_eq!(parse_addr(bad), None, "{bad}");
        }
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn the_dashboard_finds_the_uid_of_the_client_socket_only() {
        let table = format!(
            "{HEADER}
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:A2C4 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   this line is not a socket at all
   2: 0100007F:A2C4 0100007F:1F9
   3: 0200007F:A2C4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  2002        0 1003 1 0000000000000000 20 4 30 10 -1
   4: 0100007F:A2C4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 1004 1 0000000000000000 20 4 30 10 -1
"
        );
        let listener = v4([127, 0, 0, 1], 8080);
        let client = v4([127, 0, 0, 1], 41668);
        assert_eq!(
            uid_in_proc_net_tcp(&table, client, listener),
            Some(1000),
            "the client's row, not the listener's or the accepted socket's (root's)"
        );
        assert_eq!(
            uid_in_proc_net_tcp(&table, v4([127, 0, 0, 2], 41668), listener),
            Some(2002)
        );
        assert_eq!(
            uid_in_proc_net_tcp(&table, v4([127, 0, 0, 1], 41669), listener),
            None,
            "no row for this client: refused"
        );
        assert_eq!(uid_in_proc_net_tcp(HEADER, client, listener), None);
        let truncated = format!(
            "{HEADER}\n   4: 0100007F:A2C4 0100007F:1F90 01 00000000:00000000 00:00000000\n"
        );
        assert_eq!(
            uid_in_proc_net_tcp(&truncated, client, listener),
            None,
            "a malformed row gives no uid"
        );
    }

    #[test]
    fn the_dashboard_reads_the_effective_uid_from_status() {
        let status = "Name:\tferry\nUmask:\t0077\nUid:\t1000\t1001\t1002\t1003\nGid:\t5\t5\t5\t5\n";
        assert_eq!(euid_in_status(status), Some(1001));
        assert_eq!(euid_in_status("Name:\tferry\n"), None);
        assert!(effective_uid().is_some());
    }

    /// A real loopback connection: its client socket is ours, found right after accept.
    #[test]
    fn the_dashboard_finds_a_real_loopback_client_as_our_own_user() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(ours).unwrap();
        let (_conn, peer) = listener.accept().unwrap();
        assert_eq!(socket_uid(peer, ours), effective_uid());
        assert!(socket_uid(peer, ours).is_some());
        let elsewhere = SocketAddr::from(([127, 0, 0, 1], ours.port().wrapping_add(1)));
        assert_eq!(socket_uid(peer, elsewhere), None);
    }
}
