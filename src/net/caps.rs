//! Bandwidth caps on a session's data direction, charged for the wire
//! bytes the payload becomes, resent packets included.

use std::time::Duration;

use quinn::Connection;

use crate::throttle::{acquire_all, Limiter};

/// Bandwidth caps on a session's data direction: every limiter is charged
/// for every byte (a per-session cap and a server-wide total, say).
#[derive(Clone, Debug, Default)]
pub struct Caps(pub Vec<Limiter>);

/// Bytes charged at a time: small enough that a cap stays smooth at
/// low rates, large enough to cost nothing at high ones.
pub(super) const CAP_PIECE: usize = 16 * 1024;

/// Wire bytes per payload byte, in 1/1000: QUIC, UDP and IP headers and
/// the peer's ACKs add about 3.5% (a 2 MiB/s cap measured 2.165 MB/s on
/// the loopback counters when only payload was charged).
pub(super) const WIRE_OVERHEAD_PERMILLE: usize = 1035;

impl Caps {
    /// The tightest cap's rate in bytes per second, if any is set.
    pub(super) fn rate(&self) -> Option<u64> {
        self.0.iter().filter_map(|limiter| limiter.rate().bytes_per_sec()).min()
    }

    /// Waits until every cap allows `bytes` of payload, charged as the wire
    /// bytes they become: a cap is a promise about the link, not the payload.
    pub(super) async fn take(&self, bytes: usize) {
        self.take_wire((bytes * WIRE_OVERHEAD_PERMILLE / 1000) as u64).await;
    }

    /// Charges `bytes` that are wire bytes already (no overhead added).
    async fn take_wire(&self, bytes: u64) {
        if !self.0.is_empty() {
            let limiters: Vec<&Limiter> = self.0.iter().collect();
            acquire_all(&limiters, bytes).await;
        }
    }
}

/// How often the bytes of lost packets are charged to the caps: often
/// enough that the writers feel the debt within a few of their pieces.
const RESENT_CHARGE_INTERVAL: Duration = Duration::from_millis(20);

/// Charges `caps` for what `connection` sends again. quinn resends the data
/// of a lost packet on its own, past the writers' pacing, yet the second
/// copy is on the wire as much as the first: uncharged, 15% loss put a
/// 1 MiB/s cap 15% over on the wire. The writers then wait that much
/// longer, so the wire keeps to the cap.
pub(super) async fn charge_resent(connection: Connection, caps: Caps) {
    let mut charged = connection.stats().path.lost_bytes;
    loop {
        tokio::time::sleep(RESENT_CHARGE_INTERVAL).await;
        let lost = connection.stats().path.lost_bytes;
        if lost > charged {
            caps.take_wire(lost - charged).await;
            charged = lost;
        }
    }
}
