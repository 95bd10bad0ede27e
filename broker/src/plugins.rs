//! The rmqtt plugin the broker uses, configured from our own file: the
//! retainer with sled storage. Node topic access is our own hook
//! (`acl.rs`), not the `rmqtt-acl` plugin.
//!
//! rmqtt plugins read their configuration as TOML text by plugin name; this
//! file writes that text from [`Config`], so operators edit one file only.

use std::path::Path;

use rmqtt::context::ServerContext;
use toml::{Table, Value};

use crate::config::Config;

/// Plugin name, as rmqtt registers it.
pub const RETAINER_PLUGIN: &str = "rmqtt-retainer";

/// A plugin that failed to start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start plugin {plugin}: {source}")]
pub struct PluginError {
    plugin: &'static str,
    #[source]
    source: anyhow::Error,
}

/// Adds each plugin's configuration text to the server context builder.
pub fn configure(
    builder: rmqtt::context::ServerContextBuilder,
    config: &Config,
) -> rmqtt::context::ServerContextBuilder {
    builder.plugins_config_map_add(RETAINER_PLUGIN, retainer_config(config))
}

/// Registers and starts the retainer. It is immutable: it cannot be stopped
/// or reconfigured while the broker runs.
pub async fn start(scx: &ServerContext) -> Result<(), PluginError> {
    rmqtt_retainer::register(scx, true, true)
        .await
        .map_err(|source| PluginError {
            plugin: RETAINER_PLUGIN,
            source,
        })?;
    Ok(())
}

/// Retainer settings: sled storage under the data directory and no expiry.
///
/// Without an explicit `retained_message_ttl`, rmqtt 0.24 expires a
/// retained message after the listener's message expiry interval (5
/// minutes by default). A node's desired state must outlive any outage, so
/// the TTL is set to 0, which rmqtt reads as "never expires".
pub fn retainer_config(config: &Config) -> String {
    let mut sled = Table::new();
    sled.insert(
        "path".into(),
        Value::String(retained_dir(&config.data_dir).display().to_string()),
    );
    sled.insert(
        "cache_capacity".into(),
        Value::String(format!("{}M", config.retained.cache_mib)),
    );

    let mut storage = Table::new();
    storage.insert("type".into(), Value::String("sled".into()));
    storage.insert("sled".into(), Value::Table(sled));

    let mut table = Table::new();
    table.insert("storage".into(), Value::Table(storage));
    // The limit on retained topics is kept by `retained.rs` in O(1);
    // rmqtt's own check walks every retained topic on each publish.
    table.insert("max_retained_messages".into(), Value::Integer(0));
    table.insert(
        "max_payload_size".into(),
        Value::String(format!("{}B", config.retained.max_payload_bytes)),
    );
    table.insert("retained_message_ttl".into(), Value::String("0s".into()));
    table.to_string()
}

/// Where the retainer keeps its sled database.
pub fn retained_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("retained")
}
