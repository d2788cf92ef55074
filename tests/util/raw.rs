//! A client that speaks the raw protocol: real QUIC and TLS with pinned
//! keys, then whatever frames or bytes a test wants, in whatever order, on
//! the control stream or on data streams it opens.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream};
use xfer::net::identity::{Fingerprint, Identity};
use xfer::net::{client_config, client_endpoint, ServerPin, Tuning};
use xfer_protocol::{frame, msg, CloseCode, Message};

/// How the server ended a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The application close code, when the server gave one.
    pub code: Option<CloseCode>,
    /// Its reason, or the connection error.
    pub reason: String,
}

impl Closed {
    fn of(error: &ConnectionError) -> Closed {
        match error {
            ConnectionError::ApplicationClosed(close) => Closed {
                code: u32::try_from(close.error_code.into_inner()).ok().and_then(CloseCode::from_u32),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            other => Closed { code: None, reason: other.to_string() },
        }
    }
}

/// A connection to a server with one control stream and any data streams.
pub struct RawClient {
    pub endpoint: Endpoint,
    pub connection: Connection,
    control: Option<(SendStream, RecvStream)>,
    buf: Vec<u8>,
}

/// The client's QUIC settings: xfer's, with a long idle timeout so that a
/// stalled test client never times out by itself before the server does.
fn tuning() -> Tuning {
    Tuning { idle_timeout: Duration::from_secs(120), ..Tuning::default() }
}

/// A handshake with the server at `addr`, which must present `server`.
pub async fn connect(addr: SocketAddr, server: Fingerprint, identity: &Identity) -> Result<RawClient, Closed> {
    let endpoint = client_endpoint("127.0.0.1:0".parse().expect("literal"), tuning()).expect("udp socket");
    connect_from(&endpoint, addr, server, identity).await
}

/// A handshake from an existing endpoint (many connections, one socket).
pub async fn connect_from(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server: Fingerprint,
    identity: &Identity,
) -> Result<RawClient, Closed> {
    let config = client_config(identity, &ServerPin::new(Some(server)), tuning()).expect("tls config");
    let connecting = endpoint.connect_with(config, addr, "xfer").expect("connect");
    let connection = connecting.await.map_err(|e| Closed::of(&e))?;
    Ok(RawClient { endpoint: endpoint.clone(), connection, control: None, buf: Vec::new() })
}

impl RawClient {
    /// Opens the control stream (a no-op once open).
    pub async fn open_control(&mut self) {
        if self.control.is_none() {
            self.control = Some(self.connection.open_bi().await.expect("control stream"));
        }
    }

    /// Sends raw bytes on the control stream. `false` if the stream or
    /// connection is gone.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> bool {
        self.open_control().await;
        let (send, _) = self.control.as_mut().expect("opened above");
        send.write_all(bytes).await.is_ok()
    }

    /// Sends `message` as one frame on the control stream.
    pub async fn send(&mut self, message: &Message) -> bool {
        self.send_bytes(&frame_of(message)).await
    }

    /// `Hello` then `Open` for a push (or pull) of `path`.
    pub async fn open(&mut self, direction: msg::Direction, path: &[u8]) -> bool {
        self.send(&hello()).await && self.send(&open(direction, path)).await
    }

    /// A new data stream.
    pub async fn data_stream(&self) -> SendStream {
        self.connection.open_uni().await.expect("data stream")
    }

    /// The next message on the control stream, or `None` when the stream
    /// or the connection ends, or nothing comes within `within`.
    pub async fn recv(&mut self, within: Duration) -> Option<Message> {
        self.open_control().await;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((message, used)) = frame::decode(&self.buf).expect("the server sends valid frames") {
                self.buf.drain(..used);
                return Some(message);
            }
            let (_, recv) = self.control.as_mut().expect("opened above");
            let read = tokio::time::timeout_at(deadline, recv.read_chunk(1 << 16, true)).await;
            match read {
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk.bytes),
                _ => return None,
            }
        }
    }

    /// Reads control messages until one matches `wanted`, within `within`.
    pub async fn recv_until(&mut self, within: Duration, wanted: impl Fn(&Message) -> bool) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self.recv(left).await?;
            if wanted(&message) {
                return Some(message);
            }
        }
    }

    /// How the server closed the connection, waiting at most `within`.
    /// Panics if it is still open then.
    pub async fn closed(&self, within: Duration) -> Closed {
        match tokio::time::timeout(within, self.connection.closed()).await {
            Ok(error) => Closed::of(&error),
            Err(_) => panic!("the server did not close the connection within {within:?}"),
        }
    }

    /// Whether the connection is still open after `wait`.
    pub async fn still_open_after(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.connection.closed()).await.is_err()
    }
}

/// A frame of `kind` with `body` encoded as is, unchecked: for messages
/// over the limits, which [`frame_of`] would refuse to encode.
pub fn unchecked_frame<T: serde::Serialize>(kind: xfer_protocol::Kind, body: &T) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode_raw(kind as u8, &postcard::to_allocvec(body).expect("plain structs serialize"), &mut out);
    out
}

/// `message` as one frame.
pub fn frame_of(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(message, &mut out);
    out
}

/// Sends `message` as one frame on a data stream.
pub async fn send_on(stream: &mut SendStream, message: &Message) -> bool {
    stream.write_all(&frame_of(message)).await.is_ok()
}

pub fn hello() -> Message {
    Message::Hello(msg::Hello { version: xfer_protocol::PROTOCOL_VERSION, features: 0, agent: "hostile".into() })
}

pub fn open(direction: msg::Direction, path: &[u8]) -> Message {
    Message::Open(msg::Open {
        direction,
        path: path.to_vec(),
        delete: true,
        checksum: false,
        remembered_root: None,
        tags: Vec::new(),
        at: None,
        source_host: String::new(),
        source_path: String::new(),
        forget: Vec::new(),
    })
}

pub fn mtime() -> msg::Mtime {
    msg::Mtime { secs: 1_600_000_000, nanos: 0 }
}

/// A `WriteFile` of `data` as one chunk, listed in full (at most 64 KiB,
/// the largest chunk of a small file).
pub fn write_file(file: u32, path: &[u8], data: &[u8]) -> Message {
    let params = xfer::chunk::ChunkParams::for_size(data.len() as u64);
    let chunk = msg::ChunkRef { id: *blake3::hash(data).as_bytes(), len: data.len() as u32 };
    Message::WriteFile(msg::WriteFile {
        file,
        path: path.to_vec(),
        mode: 0o644,
        mtime: mtime(),
        size: data.len() as u64,
        hash: *blake3::hash(data).as_bytes(),
        params: xfer::wire::params_to_wire(params),
        list: msg::ChunkList::Full(vec![chunk]),
        more: false,
        attrs: Default::default(),
    })
}

/// The raw chunk answering `WriteFile`'s single chunk.
pub fn chunk_data(file: u32, data: &[u8]) -> Message {
    Message::ChunkData(msg::ChunkData {
        file,
        index: 0,
        codec: 0,
        decoded_len: data.len() as u32,
        payload: data.to_vec(),
    })
}

/// Starts a handshake with `server` and abandons it: a real client's first
/// flight (its Initial packet, captured on a socket of our own) sent from
/// a socket that never answers. The server is left waiting for the rest.
pub async fn half_open(server: SocketAddr, identity: &Identity) -> tokio::net::UdpSocket {
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("udp socket");
    let endpoint = client_endpoint("127.0.0.1:0".parse().expect("literal"), tuning()).expect("udp socket");
    let config = client_config(identity, &ServerPin::new(None), tuning()).expect("tls config");
    let connecting = endpoint.connect_with(config, capture.local_addr().expect("bound"), "xfer").expect("connect");
    let mut initial = vec![0u8; 65_536];
    let (len, _) = capture.recv_from(&mut initial).await.expect("the client's first flight");
    drop(connecting);
    let ghost = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("udp socket");
    ghost.send_to(&initial[..len], server).await.expect("send");
    ghost
}
