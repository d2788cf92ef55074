//! QUIC with mutual TLS between pinned identities, over loopback.

use std::net::SocketAddr;

use xfer::net::identity::Identity;
use xfer::net::{client_config, client_endpoint, peer_fingerprint, server_endpoint, ServerPin, Tuning};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn transport_mutual_pinned_connection() {
    let (server_id, client_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let server = server_endpoint(loopback(), &server_id, Tuning::default()).unwrap();
    let addr = server.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        let connection = server.accept().await.unwrap().await.unwrap();
        let client = peer_fingerprint(&connection);
        let (mut send, mut recv) = connection.accept_bi().await.unwrap();
        let request = recv.read_to_end(1024).await.unwrap();
        send.write_all(&[b"echo ".as_slice(), &request].concat()).await.unwrap();
        send.finish().unwrap();
        connection.closed().await;
        client
    });

    let pin = ServerPin::new(Some(server_id.fingerprint()));
    let client = client_endpoint(loopback(), Tuning::default()).unwrap();
    let config = client_config(&client_id, &pin, Tuning::default()).unwrap();
    let connection = client.connect_with(config, addr, "xfer").unwrap().await.unwrap();
    assert_eq!(peer_fingerprint(&connection), Some(server_id.fingerprint()));
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(b"ping").await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(1024).await.unwrap(), b"echo ping");
    connection.close(0u32.into(), b"done");
    // The server saw which key the client holds.
    assert_eq!(serving.await.unwrap(), Some(client_id.fingerprint()));
}

#[tokio::test]
async fn transport_refuses_unpinned_server_and_reports_its_key() {
    let (server_id, client_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let server = server_endpoint(loopback(), &server_id, Tuning::default()).unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let _ = incoming.await;
        }
    });
    let client = client_endpoint(loopback(), Tuning::default()).unwrap();
    for expected in [None, Some(Identity::generate().unwrap().fingerprint())] {
        let pin = ServerPin::new(expected);
        let config = client_config(&client_id, &pin, Tuning::default()).unwrap();
        let result = client.connect_with(config, addr, "xfer").unwrap().await;
        assert!(result.is_err(), "connected to a server that is not pinned");
        assert_eq!(pin.seen(), Some(server_id.fingerprint()));
    }
}
