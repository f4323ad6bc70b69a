//! One edge's subscription, whatever carries it: hello and version negotiation,
//! then at most one fleet version in flight at a time (the newest when the previous
//! one is answered, so a burst of changes reaches a slow edge as one), fleet health
//! as it changes, and the edge's answers and observations into the hub.
//!
//! It must never trust the hello's edge id beyond what the client certificate
//! vouches for.

use crate::telemetry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::wire::{
    CpMessage, EdgeMessage, FrameError, OLDEST_WIRE_VERSION, WIRE_VERSION, decode, encode, negotiate, read_frame,
    write_frame,
};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::hub::Hub;

/// How long an edge has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an edge has to answer a version; a silent one is dropped and will
/// subscribe again.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Who is on the other end, as the transport established it.
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) transport: &'static str,
    /// The verified client certificate.
    pub(crate) cert: CertificateDer<'static>,
}

/// Why a subscription ended abnormally.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("no hello within {HELLO_TIMEOUT:?}")]
    NoHello,
    #[error("expected hello, got {0}")]
    NotHello(&'static str),
    #[error("refused: {0}")]
    Refused(String),
    #[error("version {0} unanswered for {ANSWER_TIMEOUT:?}")]
    NoAnswer(u64),
}

/// Serves one subscription until either side ends it.
pub(crate) async fn serve<R, W>(hub: Arc<Hub>, mut rx: R, mut tx: W, peer: Peer) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut rx)).await {
        Err(_) | Ok(Ok(None)) => return Err(SessionError::NoHello),
        Ok(r) => r?.unwrap_or_default(),
    };
    let hello = match decode::<EdgeMessage>(&hello)? {
        EdgeMessage::Hello(h) => h,
        other => return Err(SessionError::NotHello(kind(&other))),
    };
    let refuse = |reason: String| CpMessage::Refused {
        reason,
        oldest: OLDEST_WIRE_VERSION,
        newest: WIRE_VERSION,
    };
    if !certified(&peer.cert, &hello.edge_id) {
        let reason = format!(
            "edge id `{}` is not a DNS name of the client certificate",
            hello.edge_id
        );
        let _ = write_frame(&mut tx, &encode(&refuse(reason.clone()))).await;
        return Err(SessionError::Refused(reason));
    }
    let Some(wire) = negotiate(hello.wire, OLDEST_WIRE_VERSION, WIRE_VERSION) else {
        let reason = format!(
            "wire version {} is older than the oldest served, {OLDEST_WIRE_VERSION}",
            hello.wire
        );
        let _ = write_frame(&mut tx, &encode(&refuse(reason.clone()))).await;
        return Err(SessionError::Refused(reason));
    };
    let epoch = hub.epoch();
    // A version from another store means nothing here.
    let mut runs = hello.running.filter(|r| r.epoch == epoch).map(|r| r.version);
    let edge_id = hello.edge_id;
    let session = hub.connect(&edge_id, peer.addr, peer.transport, wire, runs);
    tracing::info!(edge = %edge_id, addr = %peer.addr, transport = peer.transport, wire, runs = ?runs, "edge subscribed");

    let (answers_tx, mut answers) = mpsc::channel::<(u64, bool)>(4);
    let reader = {
        let (hub, edge_id) = (hub.clone(), edge_id.clone());
        async move {
            loop {
                let Some(frame) = read_frame(&mut rx).await? else {
                    return Ok::<(), SessionError>(());
                };
                match decode::<EdgeMessage>(&frame)? {
                    EdgeMessage::Ack { version } => {
                        hub.answered(&edge_id, session, version, None);
                        let _ = answers_tx.send((version, true)).await;
                    }
                    EdgeMessage::Nack { version, reason } => {
                        tracing::warn!(edge = %edge_id, version, reason = %reason, "edge refused a version");
                        hub.answered(&edge_id, session, version, Some(reason));
                        let _ = answers_tx.send((version, false)).await;
                    }
                    EdgeMessage::Health { observations } => hub.observed(&edge_id, session, observations),
                    EdgeMessage::Hello(_) => return Err(SessionError::NotHello("a second hello")),
                }
            }
        }
    };
    let writer = async {
        write_frame(&mut tx, &encode(&CpMessage::Welcome { wire, epoch })).await?;
        let mut published = hub.subscribe();
        let mut health = hub.health();
        if wire >= 2 {
            let frame = health.borrow_and_update().frame.clone();
            write_frame(&mut tx, &frame).await?;
        }
        let mut in_flight: Option<u64> = None;
        let mut answer_by = tokio::time::Instant::now();
        let mut sent_at = answer_by;
        let mut sent_kind = "snapshot";
        let mut refused: Option<u64> = None;
        loop {
            if in_flight.is_none() {
                let p = published.borrow_and_update().clone();
                if p.version > 0 && runs != Some(p.version) && refused != Some(p.version) {
                    let (frame, kind) = match &p.delta {
                        Some((base, delta)) if wire >= 2 && runs == Some(*base) => (delta, "delta"),
                        _ => (&p.snapshot, "snapshot"),
                    };
                    write_frame(&mut tx, frame).await?;
                    in_flight = Some(p.version);
                    sent_kind = kind;
                    sent_at = tokio::time::Instant::now();
                    answer_by = sent_at + ANSWER_TIMEOUT;
                }
            }
            tokio::select! {
                r = published.changed(), if in_flight.is_none() => {
                    if r.is_err() {
                        return Ok(());
                    }
                }
                r = health.changed(), if wire >= 2 => {
                    if r.is_err() {
                        return Ok(());
                    }
                    let frame = health.borrow_and_update().frame.clone();
                    write_frame(&mut tx, &frame).await?;
                }
                _ = tokio::time::sleep_until(answer_by), if in_flight.is_some() => {
                    metrics::counter!(telemetry::PUSH_TIMEOUTS).increment(1);
                    return Err(SessionError::NoAnswer(in_flight.unwrap_or_default()));
                }
                answer = answers.recv() => match answer {
                    Some((version, ok)) => {
                        let result = if ok { "ack" } else { "nack" };
                        metrics::counter!(telemetry::EDGE_ANSWERS, "result" => result).increment(1);
                        if in_flight == Some(version) {
                            metrics::histogram!(telemetry::PUSH_DURATION, "result" => result, "kind" => sent_kind)
                                .record(sent_at.elapsed().as_secs_f64());
                        }
                        if ok {
                            runs = Some(version);
                        } else {
                            refused = Some(version);
                        }
                        in_flight = None;
                    }
                    None => return Ok::<(), SessionError>(()),
                },
            }
        }
    };
    let result = tokio::select! {
        r = reader => r,
        r = writer => r,
    };
    hub.disconnected(&edge_id, session);
    tracing::info!(edge = %edge_id, result = ?result.as_ref().err().map(ToString::to_string), "edge unsubscribed");
    result
}

fn kind(m: &EdgeMessage) -> &'static str {
    match m {
        EdgeMessage::Hello(_) => "hello",
        EdgeMessage::Ack { .. } => "ack",
        EdgeMessage::Nack { .. } => "nack",
        EdgeMessage::Health { .. } => "health",
    }
}

/// Whether `edge_id` is a DNS name the (already verified) certificate is valid for.
fn certified(cert: &CertificateDer<'static>, edge_id: &str) -> bool {
    let Ok(name) = ServerName::try_from(edge_id) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert).is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}
