//! Counts of the limits and access rules that turned something away.

use std::sync::atomic::{AtomicU64, Ordering};

/// A limit or an access rule that turned something away. Each is counted in
/// [`Counters`], exported on `/metrics` as `automation_framework_limit_hits_total`
/// labelled by [`Limit::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A peer no `[access]` rule lets in.
    NotPermitted,
    /// `daemon.max_connections`.
    MaxConnections,
    /// `daemon.max_connections_per_uid`.
    MaxConnectionsPerUid,
    /// `daemon.handshake_timeout`.
    HandshakeTimeout,
    /// `daemon.idle_timeout` while waiting for a request.
    IdleTimeout,
    /// `daemon.idle_timeout` while waiting for the peer to read its replies.
    SlowReader,
    /// A length prefix over the frame limit.
    FrameTooLarge,
    /// A frame that is not a valid message.
    Malformed,
    /// `daemon.max_batch`.
    MaxBatch,
    /// A reply that would not fit in a frame, answered with an error instead.
    ReplyTooLarge,
    /// An agent name reserved by `[[agents]]` for other users.
    AgentName,
    /// An admin operation by a peer that is not an admin.
    AdminOnly,
    /// `daemon.max_reservations_per_uid`, orphans included.
    MaxReservationsPerUid,
    /// `daemon.max_reservations`, orphans included.
    MaxReservations,
    /// An HTTP connection that found every slot, the probes' reserve included,
    /// taken.
    HttpConnections,
    /// An HTTP connection from a peer that already held its share.
    HttpPerPeer,
}

/// How often each [`Limit`] was hit since the daemon started. Plain atomics, bumped
/// with `Relaxed` ordering: each is an independent count, read for reporting only.
#[derive(Debug, Default)]
pub struct Counters {
    hits: [AtomicU64; Limit::ALL.len()],
}

// === impl Limit ===

impl Limit {
    pub const ALL: [Limit; 16] = [
        Limit::NotPermitted,
        Limit::MaxConnections,
        Limit::MaxConnectionsPerUid,
        Limit::HandshakeTimeout,
        Limit::IdleTimeout,
        Limit::SlowReader,
        Limit::FrameTooLarge,
        Limit::Malformed,
        Limit::MaxBatch,
        Limit::ReplyTooLarge,
        Limit::AgentName,
        Limit::AdminOnly,
        Limit::MaxReservationsPerUid,
        Limit::MaxReservations,
        Limit::HttpConnections,
        Limit::HttpPerPeer,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Limit::NotPermitted => "not_permitted",
            Limit::MaxConnections => "max_connections",
            Limit::MaxConnectionsPerUid => "max_connections_per_uid",
            Limit::HandshakeTimeout => "handshake_timeout",
            Limit::IdleTimeout => "idle_timeout",
            Limit::SlowReader => "slow_reader",
            Limit::FrameTooLarge => "frame_too_large",
            Limit::Malformed => "malformed",
            Limit::MaxBatch => "max_batch",
            Limit::ReplyTooLarge => "reply_too_large",
            Limit::AgentName => "agent_name",
            Limit::AdminOnly => "admin_only",
            Limit::MaxReservationsPerUid => "max_reservations_per_uid",
            Limit::MaxReservations => "max_reservations",
            Limit::HttpConnections => "http_connections",
            Limit::HttpPerPeer => "http_per_peer",
        }
    }
}

// === impl Counters ===

impl Counters {
    pub fn hit(&self, limit: Limit) {
        self.hits[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, limit: Limit) -> u64 {
        self.hits[limit as usize].load(Ordering::Relaxed)
    }

    /// Every limit with its count, in [`Limit::ALL`] order.
    pub fn snapshot(&self) -> Vec<(Limit, u64)> {
        Limit::ALL
            .iter()
            .map(|&limit| (limit, self.get(limit)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_has_its_own_counter() {
        for (idx, limit) in Limit::ALL.iter().enumerate() {
            assert_eq!(*limit as usize, idx, "Limit::ALL is in declaration order");
        }
        let counters = Counters::default();
        counters.hit(Limit::MaxBatch);
        counters.hit(Limit::MaxBatch);
        counters.hit(Limit::AdminOnly);
        assert_eq!(counters.get(Limit::MaxBatch), 2);
        assert_eq!(counters.get(Limit::AdminOnly), 1);
        assert_eq!(counters.snapshot().iter().map(|(_, n)| n).sum::<u64>(), 3);
    }
}
