//! The QUIC transport: one bidirectional stream per subscription, opened by the
//! edge. Keep-alives come from the edge; a silent edge is dropped after the idle
//! timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use super::PushError;
use super::hub::Hub;
use super::session::{self, Peer};

/// Idle timeout; edges send keep-alives every 2 s.
const IDLE: Duration = Duration::from_secs(6);

/// Socket buffers of the QUIC socket. Every edge shares it: after a control-plane
/// restart a thousand edges reconnect at once, and the kernel's default (~200 KiB)
/// drops most of their handshakes, each costing a retransmission timeout. The kernel
/// caps the request at `net.core.rmem_max` / `wmem_max`.
const SOCKET_BUFFER: usize = 4 << 20;

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Err(e) = socket
        .set_recv_buffer_size(SOCKET_BUFFER)
        .and_then(|()| socket.set_send_buffer_size(SOCKET_BUFFER))
    {
        tracing::warn!(error = %e, "cannot enlarge the QUIC socket buffers");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

pub(super) fn start(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    hub: Arc<Hub>,
) -> Result<(quinn::Endpoint, tokio::task::JoinHandle<()>), PushError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| PushError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(IDLE.try_into().ok())
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        // Frames are small except the occasional snapshot; modest windows keep the
        // per-edge memory low with a thousand edges connected.
        .stream_receive_window((256u32 << 10).into())
        .receive_window((512u32 << 10).into())
        .send_window(1 << 20);
    config.transport_config(Arc::new(transport));
    let bind = |source| PushError::Bind {
        what: "quic",
        addr,
        source,
    };
    let socket = udp_socket(addr).map_err(bind)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind)?;
    let accept = endpoint.clone();
    let task = tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            let hub = hub.clone();
            tokio::spawn(async move {
                let addr = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "QUIC handshake failed");
                        return;
                    }
                };
                let Some(cert) = conn
                    .peer_identity()
                    .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
                    .and_then(|certs| certs.into_iter().next())
                else {
                    conn.close(1u32.into(), b"client certificate required");
                    return;
                };
                let Ok((mut send, recv)) = conn.accept_bi().await else {
                    return;
                };
                let peer = Peer {
                    addr,
                    transport: "quic",
                    cert,
                };
                if let Err(e) = session::serve(hub, recv, &mut send, peer).await {
                    tracing::debug!(%addr, error = %e, "subscription ended");
                }
                // Let the last frame (a refusal, say) reach the edge before closing.
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                conn.close(0u32.into(), b"");
            });
        }
    });
    Ok((endpoint, task))
}
