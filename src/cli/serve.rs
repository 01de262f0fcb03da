//! `tlsrelay serve`: runs the relay until SIGTERM or SIGINT; SIGHUP reloads.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tlsrelay::config::Config;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::{load_config, runtime};

/// Runs the relay with the configuration in `config_path`.
pub fn run(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    tlsrelay::ops::logging::init(&config.log);
    for w in config.warnings() {
        tracing::warn!("configuration: {w}");
    }
    runtime()?.block_on(serve(Arc::new(config), config_path))?;
    Ok(ExitCode::SUCCESS)
}

/// Starts the relay, reloads on SIGHUP (from `config_path`), stops on SIGTERM/SIGINT.
async fn serve(config: Arc<Config>, config_path: Option<&Path>) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives once the listeners accept must not
    // meet the default action (which ends the process).
    let mut hup = signal(SignalKind::hangup())?;
    let term = signal(SignalKind::terminate())?;
    let int = signal(SignalKind::interrupt())?;
    let relay = tlsrelay::relay::Relay::start(config.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    for addr in relay.local_addrs() {
        tracing::info!(%addr, hostname = %config.server.hostname, "listening");
    }
    let reload = Arc::new(relay.reloader(config_path.map(Path::to_path_buf)));
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            // Reading thousands of policy files is blocking work: off the
            // runtime's threads, so that no session waits for it.
            let reload = reload.clone();
            let _ = tokio::task::spawn_blocking(move || reload.reload()).await;
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal(term, int).await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    relay.run(stop_rx).await;
    tracing::info!("stopped");
    Ok(())
}

/// Returns on the first SIGTERM or SIGINT.
async fn wait_for_signal(mut term: Signal, mut int: Signal) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
