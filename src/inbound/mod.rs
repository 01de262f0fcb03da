//! The inbound ESMTP server: the organization's MTAs hand mail to tlsrelay here.
//!
//! `Inbound::bind` opens the listeners; `Inbound::run` accepts sessions until the
//! shutdown signal, then lets sessions in flight finish (within the grace time).

pub(crate) mod auth;
mod conn;
pub mod credentials;
pub(crate) mod session;
mod throttle;

pub use auth::Users;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::spool::{Envelope, Spool};

/// State shared by every session of one server.
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub spool: Spool,
    /// The certificate and users, swapped whole on reload.
    pub credentials: Arc<credentials::Credentials>,
    /// The password-check pool and AUTH failure throttling.
    pub auth_gate: throttle::AuthGate,
    /// Told about each message as soon as it is durable, so delivery can start.
    pub queued: Option<mpsc::UnboundedSender<Envelope>>,
    sessions: Arc<Semaphore>,
    /// `server.reserved_sessions`: used only by `relay_networks` clients once `sessions` is full.
    reserved: Arc<Semaphore>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// A bound, not yet running, inbound server.
pub struct Inbound {
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
}

/// Why the inbound server could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Binds every address in `listen` (nothing is accepted until [`Inbound::run`]).
pub async fn bind_listeners(listen: &[SocketAddr]) -> Result<Vec<TcpListener>, StartError> {
    let mut listeners = Vec::new();
    for addr in listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| StartError(format!("cannot listen on {addr}: {e}")))?;
        listeners.push(l);
    }
    Ok(listeners)
}

impl Inbound {
    /// Loads TLS material and the users file, and binds every listen address.
    pub async fn bind(
        config: Arc<Config>,
        spool: Spool,
        queued: Option<mpsc::UnboundedSender<Envelope>>,
    ) -> Result<Inbound, StartError> {
        let listeners = bind_listeners(&config.server.listen).await?;
        Inbound::with_listeners(config, spool, queued, listeners)
    }

    /// Like [`Inbound::bind`], on listeners bound earlier by [`bind_listeners`]
    /// (by `serve`, before it gives up root).
    pub fn with_listeners(
        config: Arc<Config>,
        spool: Spool,
        queued: Option<mpsc::UnboundedSender<Envelope>>,
        listeners: Vec<TcpListener>,
    ) -> Result<Inbound, StartError> {
        let credentials = Arc::new(credentials::Credentials::load(&config).map_err(StartError)?);
        let sessions = Arc::new(Semaphore::new(config.server.max_sessions));
        let reserved = Arc::new(Semaphore::new(config.server.reserved_sessions));
        Ok(Inbound {
            listeners,
            shared: Arc::new(Shared {
                auth_gate: throttle::AuthGate::new(&config.server),
                config,
                spool,
                credentials,
                queued,
                sessions,
                reserved,
                per_client: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The certificate and users in force, for reload.
    pub fn credentials(&self) -> Arc<credentials::Credentials> {
        self.shared.credentials.clone()
    }

    /// The addresses actually bound (useful when a port of 0 was asked for).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` turns true; then stops accepting and waits for
    /// sessions in flight, at most `server.shutdown_grace`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let (accepted_tx, mut accepted_rx) = mpsc::channel::<(TcpStream, SocketAddr)>(64);
        let mut acceptors = JoinSet::new();
        for l in self.listeners {
            let tx = accepted_tx.clone();
            acceptors.spawn(async move {
                // Counted for /readyz while this loop runs; an abort drops it too.
                let _up = crate::reporting::health::listener_up();
                loop {
                    match l.accept().await {
                        Ok(pair) => {
                            if tx.send(pair).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        drop(accepted_tx);
        let mut sessions = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some((stream, peer)) = accepted_rx.recv() => {
                    let shared = self.shared.clone();
                    let rx = shutdown.clone();
                    sessions.spawn(async move { admit(shared, stream, peer, rx).await });
                }
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        acceptors.abort_all();
        let grace = self.shared.config.server.shutdown_grace.get();
        tracing::info!(
            sessions = sessions.len(),
            "no longer accepting connections; waiting for sessions in flight"
        );
        let drained = tokio::time::timeout(grace, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                aborted = sessions.len(),
                "shutdown grace time over; aborting sessions (none of them was told 250 for an unstored message)"
            );
            sessions.abort_all();
        }
    }
}

/// Applies the session limits, then runs the session.
async fn admit(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    metrics::counter!(crate::reporting::metrics::INBOUND_SESSIONS).increment(1);
    let ip = peer.ip();
    let Some(_permit) = session_permit(&shared, ip) else {
        tracing::warn!(client = %peer, "session refused: server.max_sessions reached");
        crate::reporting::metrics::inbound_reply(421, "4.3.2");
        let _ = stream
            .write_all(b"421 4.3.2 Too many connections; try again later\r\n")
            .await;
        return;
    };
    let admitted = {
        let mut map = shared.per_client.lock().unwrap();
        let n = map.entry(ip).or_insert(0);
        let ok = *n < shared.config.server.max_sessions_per_client;
        if ok {
            *n += 1;
        }
        ok
    };
    if !admitted {
        tracing::warn!(client = %peer, "session refused: server.max_sessions_per_client reached");
        crate::reporting::metrics::inbound_reply(421, "4.7.0");
        let _ = stream
            .write_all(b"421 4.7.0 Too many connections from your address; try again later\r\n")
            .await;
        return;
    }
    let _guard = ClientSlot {
        shared: shared.clone(),
        ip,
    };
    session::Session::new(shared.clone(), stream, peer, shutdown)
        .run()
        .await;
}

/// A session slot: an ordinary one, or else, for a `relay_networks` client, a
/// reserved one, so strangers holding every ordinary slot cannot lock out the
/// organization's own MTAs.
fn session_permit(shared: &Shared, ip: IpAddr) -> Option<OwnedSemaphorePermit> {
    shared
        .sessions
        .clone()
        .try_acquire_owned()
        .ok()
        .or_else(|| {
            shared
                .config
                .server
                .is_relay_client(ip)
                .then(|| shared.reserved.clone().try_acquire_owned().ok())
                .flatten()
        })
}

/// Frees a per-client session slot when the session ends.
struct ClientSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.shared.per_client.lock().unwrap();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}
