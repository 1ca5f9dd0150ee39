//! One connected session: both connections opened and introduced, the folder reconciled with the
//! server's META-DATA, then the update and push connections run until one of them ends (which ends the
//! other: the server treats a client as the pair of its connections).

use std::sync::Arc;
use std::time::Duration;

use ferry_core::Conn;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::events::SyncEvent;
use super::shared::Shared;
use super::{push_conn, update_conn};
use crate::message_reader::{MessageReader, Next, encode, max_message_len};
use crate::wire::metadata::METADATA_HEADER_LEN;
use crate::{Hello, Message, Metadata, PROTOCOL_VERSION, Role, StatusCode};

/// How long connecting and the handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(30);

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum SessionError {
    /// Worth trying again later (the server went away, a timeout).
    Retry(String),
    /// Trying again would not help (the server speaks another protocol version).
    Fatal(String),
}

/// Connects, reconciles, and syncs until the connection is lost (`Err`) or `stop` (`Ok`).
pub(crate) async fn run(shared: &Arc<Shared>, stop: &CancellationToken) -> Result<(), SessionError> {
    let connected = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        connected = tokio::time::timeout(HANDSHAKE, connect(shared)) => connected,
    };
    let (update, push, metadata) = match connected {
        Ok(result) => result?,
        Err(_) => return Err(SessionError::Retry("the server did not answer the handshake in time".into())),
    };
    let worker = shared.clone();
    tokio::task::spawn_blocking(move || {
        worker.rescan(false);
        worker.apply_reconcile(&metadata);
        worker.save();
    })
    .await
    .map_err(|e| SessionError::Retry(format!("reconciliation failed: {e}")))?;
    let server = format!("{}:{}", shared.options.host, shared.options.port);
    tracing::info!(client = %shared.client_id, "connected to {server}");
    shared.observer.event(SyncEvent::Connected { server, client_id: shared.client_id.to_string() });
    let session = stop.child_token();
    let ended = tokio::select! {
        r = update_conn::run(shared.clone(), update, session.clone()) => r,
        r = push_conn::run(shared.clone(), push, session.clone()) => r,
    };
    session.cancel();
    shared.session_ended();
    match ended {
        Ok(()) => Ok(()),
        Err(reason) => Err(SessionError::Retry(reason)),
    }
}

/// Opens and introduces both connections; returns them and the server's META-DATA.
async fn connect(shared: &Arc<Shared>) -> Result<(Conn, Conn, Metadata), SessionError> {
    let options = &shared.options;
    // The largest message either connection may carry (a chunk, or the META-DATA at connect), plus
    // room for one read.
    let largest =
        max_message_len(&options.limits).max(options.limits.max_metadata_bytes as usize + METADATA_HEADER_LEN);
    let max = largest + (2 << 20);
    let mut update = open(&options.host, options.port, max).await?;
    let hello = |role| Message::Hello(Hello::new(role, shared.client_id.clone()));
    update.queue(encode(&hello(Role::Update)));
    let metadata = match first_message(&mut update, shared).await? {
        Message::MetaData(metadata) => metadata,
        other => return Err(unexpected(other)),
    };
    let mut push = open(&options.host, options.push_port, max).await?;
    push.queue(encode(&hello(Role::Push)));
    match first_message(&mut push, shared).await? {
        Message::Status(StatusCode::Ok) => {}
        other => return Err(unexpected(other)),
    }
    Ok((update, push, metadata))
}

async fn open(host: &str, port: u16, max: usize) -> Result<Conn, SessionError> {
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| SessionError::Retry(format!("cannot connect to {host}:{port}: {e}")))?;
    Ok(Conn::new(stream, max))
}

/// The server's first message on a connection (keep-alives skipped). A hello back means it does not
/// speak our version.
async fn first_message(conn: &mut Conn, shared: &Shared) -> Result<Message, SessionError> {
    let mut reader = MessageReader::default();
    let limits = shared.options.limits;
    loop {
        match reader.next(conn.read_buf(), &limits) {
            Next::Message(Message::Status(StatusCode::KeepAlive)) => continue,
            Next::Message(Message::Hello(hello)) => {
                return Err(SessionError::Fatal(format!(
                    "the server speaks sync protocol version {}, this client {PROTOCOL_VERSION}",
                    hello.version
                )));
            }
            Next::Message(message) => return Ok(message),
            Next::Incomplete => {}
            Next::Refused { error, .. } | Next::Fatal(error) => {
                return Err(SessionError::Retry(format!("the server's first message: {error}")));
            }
        }
        match conn.pump(true).await {
            Ok(event) if event.peer_closed() => {
                return Err(SessionError::Retry("the server closed the connection at the hello".into()));
            }
            Ok(_) => {}
            Err(e) => return Err(SessionError::Retry(format!("handshake: {e}"))),
        }
    }
}

fn unexpected(message: Message) -> SessionError {
    SessionError::Retry(format!("unexpected {} from the server at connect", message.message_type().name()))
}
