//! QUIC endpoints (quinn): mutual TLS 1.3 between self-signed identities
//! pinned by fingerprint, with socket buffers and flow-control windows sized
//! for fast and long links. The only module that names quinn.

pub mod access;
pub mod admission;
pub mod audit;
pub mod caps;
pub mod client;
mod controller;
pub mod driver;
pub mod frames;
pub mod identity;
pub mod limiter;
pub mod link;
pub mod manage;
pub mod metrics;
pub mod served;
pub mod server;
mod tls;
mod watch;

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ClientConfig, Connection, Endpoint, EndpointConfig, IdleTimeout, ServerConfig, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;

use crate::net::identity::{Fingerprint, Identity};

pub use xfer_protocol::ALPN;

/// UDP socket buffers. quinn's defaults (the kernel's 208 KiB) lost ~8,000
/// packets per 2 GiB on loopback and topped out at 1.3 Gbit/s; 4 MiB lost
/// none and reached 2.2-2.9 Gbit/s (measured on this project's test machine).
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Per-stream receive window: 16 MiB, with the connection and send windows
/// below, took loopback to 2.5-3.1 Gbit/s; 64 MiB helped nothing there.
pub const STREAM_WINDOW: u32 = 16 << 20;

/// Connection receive window and send window: 64 MiB covers the
/// bandwidth-delay product of a 1 Gbit/s link at 100 ms (12.5 MB) several
/// times over, so several streams can each fill their window.
pub const CONNECTION_WINDOW: u32 = 64 << 20;

/// Ack-eliciting packets a peer may receive before it must acknowledge.
pub const ACK_THRESHOLD: u32 = 8;

/// A silent peer is dropped after this long (keep-alives run at a third): a
/// minute rides out a short network outage, and frees the destination of a
/// client killed mid-push a minute later.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Declares [`Congestion`]: each controller is one line, its name and the
/// quinn factory that builds it; the list of names, parsing and printing
/// follow from it.
macro_rules! congestion_controllers {
    ($($(#[$attr:meta])* $variant:ident = $name:literal => $factory:expr;)+) => {
        /// The congestion controller of an endpoint's connections
        /// (`--congestion NAME`).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Congestion {
            $($(#[$attr])* $variant,)+
        }

        impl Congestion {
            /// Every controller, in the order `--help` lists them.
            pub const ALL: &'static [Congestion] = &[$(Congestion::$variant),+];

            /// The name `--congestion` takes.
            pub fn name(self) -> &'static str {
                match self {
                    $(Congestion::$variant => $name,)+
                }
            }

            fn factory(self) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
                match self {
                    $(Congestion::$variant => Arc::new($factory),)+
                }
            }
        }
    };
}

congestion_controllers! {
    /// xfer's own (see [`crate::congestion`]): keeps the path's measured
    /// capacity in flight plus a short queue, so random loss does not
    /// shrink it and the bottleneck's queue does not overflow.
    #[default]
    Xfer = "xfer" => controller::ModelFactory;
    /// CUBIC (RFC 9438), quinn's default: backs off on every loss, so
    /// random loss on a long link keeps it far below the link's rate.
    Cubic = "cubic" => quinn::congestion::CubicConfig::default();
    /// NewReno (RFC 9002): halves on loss and grows by a packet per round trip.
    NewReno = "newreno" => quinn::congestion::NewRenoConfig::default();
    /// quinn's BBR: random loss does not shrink it, but quinn paces at
    /// 1.25 x window / round trip and BBR's window is twice the path's
    /// capacity, so it overfills the bottleneck's queue: on a 150 ms, 1%
    /// loss link it sent about 2x the bytes that arrived.
    Bbr = "bbr" => quinn::congestion::BbrConfig::default();
}

/// A name that is no [`Congestion`] controller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown congestion controller {given:?}; use one of: {}", Congestion::names())]
pub struct UnknownCongestion {
    /// What was given.
    pub given: String,
}

impl Congestion {
    /// The names, comma separated, for messages.
    pub fn names() -> String {
        let names: Vec<&str> = Congestion::ALL.iter().map(|c| c.name()).collect();
        names.join(", ")
    }
}

impl FromStr for Congestion {
    type Err = UnknownCongestion;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim();
        Congestion::ALL
            .iter()
            .copied()
            .find(|c| c.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownCongestion { given: text.to_string() })
    }
}

impl serde::Serialize for Congestion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl fmt::Display for Congestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Socket and flow-control settings of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// UDP send and receive buffer sizes; `None` keeps the kernel default.
    pub socket_buffer: Option<usize>,
    /// Raise stream, connection and send windows to [`STREAM_WINDOW`] and
    /// [`CONNECTION_WINDOW`]; `false` keeps quinn's defaults.
    pub large_windows: bool,
    /// A silent peer is dropped after this long; a dead client's lock on its
    /// destination lasts this long.
    pub idle_timeout: Duration,
    /// The congestion controller of the endpoint's connections (each side
    /// runs its own for what it sends).
    pub congestion: Congestion,
}

impl Default for Tuning {
    /// xfer's settings.
    fn default() -> Self {
        Tuning {
            socket_buffer: Some(SOCKET_BUFFER),
            large_windows: true,
            idle_timeout: IDLE_TIMEOUT,
            congestion: Congestion::default(),
        }
    }
}

impl Tuning {
    /// quinn's and the kernel's defaults, for comparison.
    #[cfg(feature = "internals")]
    pub fn stock() -> Self {
        Tuning { socket_buffer: None, large_windows: false, idle_timeout: IDLE_TIMEOUT, congestion: Congestion::Cubic }
    }

    /// xfer's settings with `congestion`.
    pub fn with_congestion(congestion: Congestion) -> Self {
        Tuning { congestion, ..Tuning::default() }
    }

    fn transport_config(&self) -> Arc<TransportConfig> {
        self.transport_config_counting(None)
    }

    /// The transport config; with `acked`, its connections add up there
    /// the bytes their peer acknowledged.
    fn transport_config_counting(&self, acked: Option<Arc<AtomicU64>>) -> Arc<TransportConfig> {
        let mut config = TransportConfig::default();
        if self.large_windows {
            // Fewer ACKs: an ACK per 2 packets cost the reverse direction
            // 0.28 MB on a 6 MB source-tree delta.
            let mut acks = quinn::AckFrequencyConfig::default();
            acks.ack_eliciting_threshold(VarInt::from_u32(ACK_THRESHOLD));
            config.ack_frequency_config(Some(acks));
            config
                .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
                .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
                .send_window(u64::from(CONNECTION_WINDOW));
        }
        // A session uses one bidirectional stream and DATA_STREAMS
        // unidirectional ones. Each stream a peer may open costs a reader and
        // a frame's buffer (4 MiB) on this side, so it may open no more.
        config
            .max_concurrent_bidi_streams(VarInt::from_u32(1))
            .max_concurrent_uni_streams(VarInt::from_u32(frames::DATA_STREAMS as u32));
        // Durations beyond a QUIC varint's range fall back to the default.
        let idle_timeout = crate::crashpoint::idle_timeout().unwrap_or(self.idle_timeout);
        let idle = IdleTimeout::try_from(idle_timeout).unwrap_or_else(|_| IdleTimeout::from(VarInt::from_u32(60_000)));
        config.keep_alive_interval(Some(idle_timeout / 3)).max_idle_timeout(Some(idle));
        let factory = self.congestion.factory();
        match acked {
            Some(acked) => config.congestion_controller_factory(Arc::new(controller::Counting { inner: factory, acked })),
            None => config.congestion_controller_factory(factory),
        };
        Arc::new(config)
    }
}

/// A UDP socket bound to `addr` with [`SOCKET_BUFFER`]-sized buffers (the
/// kernel may cap them at `net.core.rmem_max`).
fn udp_socket(addr: SocketAddr, tuning: Tuning) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(size) = tuning.socket_buffer {
        // Best effort: a smaller buffer only costs speed.
        let _ = socket.set_recv_buffer_size(size);
        let _ = socket.set_send_buffer_size(size);
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A server endpoint on `addr` presenting `identity`. Every client must
/// present a certificate (proving it holds its key); which fingerprints are
/// admitted is decided per session, so a refused client can be told why.
///
/// # Errors
/// I/O errors binding the socket, or a TLS configuration error.
pub fn server_endpoint(addr: SocketAddr, identity: &Identity, tuning: Tuning) -> io::Result<Endpoint> {
    let tls = tls::server_config(identity)?;
    let crypto = QuicServerConfig::try_from(tls).map_err(io::Error::other)?;
    let mut config = ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(tuning.transport_config());
    let runtime = Arc::new(quinn::TokioRuntime);
    Endpoint::new(EndpointConfig::default(), Some(config), udp_socket(addr, tuning)?, runtime)
}

/// A client endpoint bound to `addr` (usually an unspecified address, port 0).
///
/// # Errors
/// I/O errors binding the socket.
pub fn client_endpoint(addr: SocketAddr, tuning: Tuning) -> io::Result<Endpoint> {
    Endpoint::new(EndpointConfig::default(), None, udp_socket(addr, tuning)?, Arc::new(quinn::TokioRuntime))
}

/// What the client expects of the server's key, and what it saw.
#[derive(Clone, Debug, Default)]
pub struct ServerPin {
    /// The pinned fingerprint; `None` refuses every server but records its
    /// fingerprint (to print it with the command that trusts it).
    pub expected: Option<Fingerprint>,
    /// The fingerprint the server presented, once the handshake saw it.
    pub seen: Arc<Mutex<Option<Fingerprint>>>,
}

impl ServerPin {
    /// A pin on `fingerprint`.
    pub fn new(fingerprint: Option<Fingerprint>) -> Self {
        ServerPin { expected: fingerprint, seen: Arc::default() }
    }

    /// The fingerprint the server presented, if the handshake got that far.
    pub fn seen(&self) -> Option<Fingerprint> {
        self.seen.lock().ok().and_then(|seen| *seen)
    }
}

/// Client configuration presenting `identity` and accepting only the
/// server that `pin` names (tests and benches; [`Link`](client::Link)
/// counts acknowledged bytes with [`client_config_counting`]).
///
/// # Errors
/// A TLS configuration error.
#[cfg(feature = "internals")]
pub fn client_config(identity: &Identity, pin: &ServerPin, tuning: Tuning) -> io::Result<ClientConfig> {
    client_config_counting(identity, pin, tuning, None)
}

/// [`client_config`], whose connection adds up in `acked` the bytes the
/// server acknowledged.
///
/// # Errors
/// A TLS configuration error.
pub fn client_config_counting(
    identity: &Identity,
    pin: &ServerPin,
    tuning: Tuning,
    acked: Option<Arc<AtomicU64>>,
) -> io::Result<ClientConfig> {
    let tls = tls::client_config(identity, pin.clone())?;
    let crypto = QuicClientConfig::try_from(tls).map_err(io::Error::other)?;
    let mut config = ClientConfig::new(Arc::new(crypto));
    config.transport_config(tuning.transport_config_counting(acked));
    Ok(config)
}

/// The fingerprint of the key the peer proved it holds.
pub fn peer_fingerprint(connection: &Connection) -> Option<Fingerprint> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    Fingerprint::of_certificate(certs.first()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congestion_names_round_trip() {
        for &c in Congestion::ALL {
            assert_eq!(c.to_string().parse::<Congestion>(), Ok(c));
        }
        assert_eq!("BBR".parse::<Congestion>(), Ok(Congestion::Bbr));
        assert_eq!(Congestion::default(), Congestion::Xfer);
        assert_eq!(Tuning::stock().congestion, Congestion::Cubic);
    }

    #[test]
    fn unknown_congestion_lists_the_names() {
        let err = "reno".parse::<Congestion>().unwrap_err().to_string();
        for &c in Congestion::ALL {
            assert!(err.contains(c.name()), "{err}");
        }
        assert!(err.contains("\"reno\""), "{err}");
    }
}
