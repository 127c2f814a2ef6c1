//! Who is on the other end of an HTTP connection, and how many connections each
//! peer holds, so that one peer cannot take every slot (issue 16: 40 half-sent
//! requests from any local user made half of the `/health` probes fail).
//!
//! On loopback every local user shares 127.0.0.1 (and may pick any 127.x.y.z),
//! so a peer there is the uid that owns the client's socket, which the kernel
//! lists in `/proc/net/tcp` (and `tcp6`): the line whose local end is the
//! peer's address and whose remote end is ours. Elsewhere (`http.allow_remote`),
//! or if the lookup fails, a peer is its IP address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

/// A peer, for counting its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum PeerKey {
    Uid(u32),
    Ip(IpAddr),
}

/// Connections held per peer.
#[derive(Debug, Default)]
pub(super) struct Peers {
    held: Mutex<HashMap<PeerKey, usize>>,
}

/// One connection counted against its peer until dropped.
pub(super) struct Held {
    peers: Arc<Peers>,
    key: PeerKey,
}

// === impl PeerKey ===

impl PeerKey {
    /// The peer of a connection from `peer` to our `local` address. Reads
    /// procfs for loopback peers: call it off the accept loop.
    pub(super) fn of(peer: SocketAddr, local: SocketAddr) -> PeerKey {
        if peer.ip().is_loopback() {
            if let Some(uid) = socket_owner(peer, local) {
                return PeerKey::Uid(uid);
            }
        }
        PeerKey::Ip(peer.ip())
    }
}

impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerKey::Uid(uid) => write!(f, "uid {uid}"),
            PeerKey::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

// === impl Peers ===

impl Peers {
    /// Counts a connection of `key`, or `None` if it already holds `max`.
    pub(super) fn enter(self: &Arc<Self>, key: PeerKey, max: usize) -> Option<Held> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(key).or_default();
        if *n >= max {
            if *n == 0 {
                held.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Held {
            peers: Arc::clone(self),
            key,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self
            .peers
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The uid owning the TCP socket whose local end is `peer` and remote end is
/// `local`, from `/proc/net/tcp` or `/proc/net/tcp6`.
fn socket_owner(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let (path, want_local, want_remote) = match (peer, local) {
        (SocketAddr::V4(p), SocketAddr::V4(l)) => (
            "/proc/net/tcp",
            v4_entry(*p.ip(), p.port()),
            v4_entry(*l.ip(), l.port()),
        ),
        (SocketAddr::V6(p), SocketAddr::V6(l)) => (
            "/proc/net/tcp6",
            v6_entry(p.ip().octets(), p.port()),
            v6_entry(l.ip().octets(), l.port()),
        ),
        _ => return None,
    };
    let table = std::fs::read_to_string(path).ok()?;
    owner_in(&table, &want_local, &want_remote)
}

/// Finds the uid column of the line with these local and remote ends.
fn owner_in(table: &str, local: &str, remote: &str) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
        let mut fields = line.split_whitespace();
        let (_, l, r) = (fields.next()?, fields.next()?, fields.next()?);
        if !l.eq_ignore_ascii_case(local) || !r.eq_ignore_ascii_case(remote) {
            return None;
        }
        fields.nth(4)?.parse().ok()
    })
}

/// An IPv4 end as procfs prints it: the address as one native-endian u32 in
/// hex, then the port.
fn v4_entry(ip: std::net::Ipv4Addr, port: u16) -> String {
    format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip.octets()))
}

/// An IPv6 end as procfs prints it: four native-endian u32 words in hex.
fn v6_entry(octets: [u8; 16], port: u16) -> String {
    let mut out = String::with_capacity(37);
    for word in octets.chunks_exact(4) {
        let word = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
        out.push_str(&format!("{word:08X}"));
    }
    out.push_str(&format!(":{port:04X}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_a_loopback_connection_is_found_in_procfs() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(
            PeerKey::of(peer, listener.local_addr().unwrap()),
            PeerKey::Uid(me)
        );
    }

    #[test]
    fn a_peer_holds_at_most_its_share_until_it_lets_go() {
        let peers = Arc::new(Peers::default());
        let key = PeerKey::Uid(1000);
        let first = peers.enter(key, 2).expect("first");
        let _second = peers.enter(key, 2).expect("second");
        assert!(peers.enter(key, 2).is_none(), "at the cap");
        assert!(
            peers.enter(PeerKey::Uid(1001), 2).is_some(),
            "others are not"
        );
        drop(first);
        assert!(peers.enter(key, 2).is_some(), "a slot came back");
    }

    #[test]
    fn procfs_lines_are_matched_on_both_ends() {
        // The first line shares its local end with the third: a connection
        // of the same port to another remote end (one in TIME_WAIT).
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   2: 0100007F:A2B4 0100007F:0050 06 00000000:00000000 00:00000000 00000000     0        0 0 1\n   0: 0100007F:1F90 0100007F:A2B4 01 00000000:00000000 00:00000000 00000000  1000        0 1 1\n   1: 0100007F:A2B4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1001        0 2 1\n";
        assert_eq!(
            owner_in(table, "0100007F:A2B4", "0100007F:1F90"),
            Some(1001)
        );
        assert_eq!(
            owner_in(table, "0100007F:1F90", "0100007F:A2B4"),
            Some(1000)
        );
        assert_eq!(owner_in(table, "0100007F:0001", "0100007F:1F90"), None);
    }
}
