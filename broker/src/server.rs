//! Start-up and shutdown of the broker: binds the listeners, starts the
//! plugins and hooks, runs rmqtt until shutdown is requested.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rmqtt::context::ServerContext;
use rmqtt::hook::Type;
use rmqtt::server::MqttServer;
use tollway_runtime::Shutdown;

use crate::acl::NodeAcl;
use crate::auth::Authenticator;
use crate::config::{Config, Profile};
use crate::events::{Counters, EventRecorder};
use crate::listeners::{ListenerError, ListenerTable, bind_all};
use crate::pacing::PacingHook;
use crate::plugins::{self, PluginError};
use crate::retained::{RetainedLimit, RetainedLimitHook};
use crate::sharing::TopicHashSharing;
use crate::takeover::TakeoverHook;

/// Hook priorities: higher runs first.
const AUTH_PRIORITY: u32 = 100;
const ACL_PRIORITY: u32 = 100;
const PACING_PRIORITY: u32 = 100;
/// After pacing, so that the wait for an ending session starts when the
/// connection has its slot.
const TAKEOVER_PRIORITY: u32 = 50;
/// Before the events hook, which counts what is published.
const RETAINED_PRIORITY: u32 = 50;
const EVENTS_PRIORITY: u32 = 0;

/// A broker that could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Listener(#[from] ListenerError),

    #[error(transparent)]
    Plugin(#[from] PluginError),

    #[error("cannot list the retained topics kept from before the restart: {source}")]
    RetainedLoad {
        #[source]
        source: anyhow::Error,
    },

    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Set when a long-running task ended before shutdown was requested.
pub type TaskFailed = Arc<AtomicBool>;

/// Starts the broker's tasks on `shutdown`. Returns once every listener is
/// bound and every plugin started, so that a caller can report readiness.
pub async fn start(
    config: &Config,
    shutdown: &mut Shutdown,
    failed: &TaskFailed,
) -> Result<(), StartError> {
    let retained_dir = plugins::retained_dir(&config.data_dir);
    std::fs::create_dir_all(&retained_dir).map_err(|source| StartError::DataDir {
        path: retained_dir.clone(),
        source,
    })?;

    let (listeners, table) = bind_all(config)?;
    let names: Vec<&'static str> = table.values().map(|info| info.name).collect();
    let counters = Arc::new(Counters::new(&names));

    // The busy check refuses CONNECTs with "server unavailable" while the
    // host's CPU load is above 90 %; Tollway admits connections through
    // its own pacing and handshake limit instead, so that admission does
    // not depend on other programs sharing the host.
    let builder = ServerContext::new().busy_check_enable(false);
    let scx = plugins::configure(builder, config).build().await;
    let retained_limit = (config.retained.max_messages > 0).then(|| {
        Arc::new(RetainedLimit::new(
            config.retained.max_messages,
            config.retained.max_payload_bytes,
            counters.clone(),
        ))
    });
    register_hooks(&scx, config, &table, &counters, retained_limit.clone()).await;
    *scx.extends.shared_subscription_mut().await = Box::new(TopicHashSharing);
    plugins::start(&scx).await?;
    if let Some(limit) = &retained_limit {
        let topics = limit
            .load(&scx)
            .await
            .map_err(|source| StartError::RetainedLoad { source })?;
        tracing::info!(
            topics,
            max_messages = config.retained.max_messages,
            "retained topics loaded"
        );
    }

    let metrics_listener = if config.metrics.enabled {
        let addr = config.metrics.bind;
        let listener = crate::metrics::bind(addr)
            .await
            .map_err(|source| StartError::Metrics { addr, source })?;
        tracing::info!(%addr, "metrics endpoint listening");
        Some(listener)
    } else {
        None
    };

    let mut server = MqttServer::new(scx.clone());
    for listener in listeners {
        server = server.listener(listener);
    }
    let server = server.build();

    let stop = shutdown.token();
    spawn_service(shutdown, failed, "mqtt-server", async move {
        // rmqtt's accept loops never return; dropping this future on
        // shutdown closes the listening sockets.
        tokio::select! {
            _ = stop.cancelled() => {}
            result = server.run() => {
                if let Err(err) = result {
                    tracing::error!(error = %err, "MQTT server stopped");
                }
            }
        }
    });

    if let Some(listener) = metrics_listener {
        let stop = shutdown.token();
        let table = table.clone();
        let counters = counters.clone();
        spawn_service(
            shutdown,
            failed,
            "metrics",
            crate::metrics::serve(listener, table, counters, stop),
        );
    }

    Ok(())
}

/// Spawns a task that should run until shutdown. If it ends before, it
/// sets `failed` and cancels the others, so the program stops with an error.
fn spawn_service<F>(shutdown: &mut Shutdown, failed: &TaskFailed, name: &'static str, task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let token = shutdown.token();
    let failed = failed.clone();
    shutdown.spawn(name, async move {
        task.await;
        if !token.is_cancelled() {
            tracing::error!(task = name, "task stopped on its own; shutting down");
            failed.store(true, Ordering::Relaxed);
            token.cancel();
        }
    });
}

async fn register_hooks(
    scx: &ServerContext,
    config: &Config,
    table: &ListenerTable,
    counters: &Arc<Counters>,
    retained_limit: Option<Arc<RetainedLimit>>,
) {
    let register = scx.extends.hook_mgr().register();

    let node_acl = match (config.profile, config.province) {
        (Profile::Province, Some(province)) => Some(NodeAcl::new(province)),
        _ => None,
    };
    let auth = || {
        Box::new(Authenticator::new(
            table.clone(),
            counters.clone(),
            node_acl.clone(),
        ))
    };
    register
        .add_priority(Type::ClientAuthenticate, AUTH_PRIORITY, auth())
        .await;

    if let Some(acl) = &node_acl {
        for typ in [Type::ClientSubscribeCheckAcl, Type::MessagePublishCheckAcl] {
            register
                .add_priority(typ, ACL_PRIORITY, Box::new(acl.clone()))
                .await;
        }
    }

    if table.values().any(|info| info.pacer.is_some()) {
        let pacing = Box::new(PacingHook::new(table.clone(), counters.clone()));
        register
            .add_priority(Type::ClientConnect, PACING_PRIORITY, pacing)
            .await;
    }

    let takeover = Box::new(TakeoverHook::new(scx.clone(), counters.clone()));
    register
        .add_priority(Type::ClientConnect, TAKEOVER_PRIORITY, takeover)
        .await;

    if let Some(limit) = retained_limit {
        register
            .add_priority(
                Type::MessagePublish,
                RETAINED_PRIORITY,
                Box::new(RetainedLimitHook::new(limit)),
            )
            .await;
    }

    let events = || Box::new(EventRecorder::new(table.clone(), counters.clone()));
    for typ in [
        Type::ClientConnected,
        Type::ClientDisconnected,
        Type::MessagePublish,
        Type::MessageDelivered,
        Type::MessageDropped,
    ] {
        register.add_priority(typ, EVENTS_PRIORITY, events()).await;
    }
    register.start().await;
}
