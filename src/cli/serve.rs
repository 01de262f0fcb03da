//! `tlsrelay serve`: runs the relay until SIGTERM or SIGINT; SIGHUP reloads.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tlsrelay::config::Config;
use tlsrelay::ops::privileges::{self, Plan};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::{load_config, runtime};

/// Runs the relay with the configuration in `config_path`.
pub fn run(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    privileges::private_umask();
    let config = load_config(config_path)?;
    // Before anything is bound or logged: root without `[server] user` stops here.
    let identity = identity_plan(&config, config_path)?;
    tlsrelay::ops::logging::init(&config.log);
    if privileges::euid() == 0 && identity == Plan::Stay {
        let env = privileges::ALLOW_ROOT_ENV;
        tracing::warn!("running as root ({env}=1): files in the spool will belong to root");
    }
    match config_path {
        Some(file) => tracing::info!(file = %file.display(), "configuration file"),
        None => tracing::info!(
            "no configuration file (no -c, no {}, no {}): built-in defaults",
            super::CONFIG_ENV,
            super::SYSTEM_CONFIG
        ),
    }
    for w in config.warnings() {
        tracing::warn!("configuration: {w}");
    }
    runtime()?.block_on(serve(Arc::new(config), config_path, identity))?;
    Ok(ExitCode::SUCCESS)
}

/// Who `serve` will run as: refuses root without `[server] user`.
fn identity_plan(config: &Config, config_path: Option<&Path>) -> anyhow::Result<Plan> {
    let account = match &config.server.user {
        Some(name) => Some(privileges::lookup(name)?),
        None => None,
    };
    let file = match config_path {
        Some(p) => p.display().to_string(),
        None => format!(
            "a configuration file (-c FILE, ${} or {})",
            super::CONFIG_ENV,
            super::SYSTEM_CONFIG
        ),
    };
    let allow_root = std::env::var_os(privileges::ALLOW_ROOT_ENV).is_some_and(|v| v == "1");
    let euid = privileges::euid();
    let plan = privileges::plan(euid, account.as_ref(), allow_root, &file)?;
    Ok(plan)
}

/// Binds the SMTP listeners (as root if started so), then becomes the
/// configured user, so that every file the relay opens after is opened as that user.
async fn bind_then_switch(config: &Config, identity: &Plan) -> anyhow::Result<Vec<TcpListener>> {
    let listeners = tlsrelay::inbound::bind_listeners(&config.server.listen).await?;
    if let Plan::SwitchTo(account) = identity {
        privileges::switch_to(account)?;
        tracing::info!(user = %account.name, uid = account.uid, gid = account.gid, "switched from root to the configured user");
    }
    Ok(listeners)
}

/// Starts the relay, reloads on SIGHUP (from `config_path`), stops on SIGTERM/SIGINT.
async fn serve(
    config: Arc<Config>,
    config_path: Option<&Path>,
    identity: Plan,
) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives once the listeners accept must not
    // meet the default action (which ends the process).
    let mut hup = signal(SignalKind::hangup())?;
    let term = signal(SignalKind::terminate())?;
    let int = signal(SignalKind::interrupt())?;
    let listeners = bind_then_switch(&config, &identity).await?;
    let relay = tlsrelay::relay::Relay::start_on(config.clone(), listeners)
        .await
        .map_err(anyhow::Error::msg)?;
    for addr in relay.local_addrs() {
        tracing::info!(%addr, hostname = %config.server.hostname, "listening");
    }
    let reload = relay.reloader(config_path.map(Path::to_path_buf));
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
