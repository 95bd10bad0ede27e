//! The rmqtt plugins the broker uses, configured from our own file: the ACL
//! plugin (province profile only) and the retainer with sled storage.
//!
//! rmqtt plugins read their configuration as TOML text by plugin name; this
//! file writes that text from [`Config`], so operators edit one file only.

use std::path::Path;

use rmqtt::context::ServerContext;
use tollway_topics::Province;
use tollway_topics::topic::PREFIX;
use toml::{Table, Value};

use crate::config::{Config, Profile};

/// Plugin names, as rmqtt registers them.
pub const ACL_PLUGIN: &str = "rmqtt-acl";
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
    let mut builder = builder.plugins_config_map_add(RETAINER_PLUGIN, retainer_config(config));
    if let (Profile::Province, Some(province)) = (config.profile, config.province) {
        builder = builder.plugins_config_map_add(ACL_PLUGIN, acl_config(province));
    }
    builder
}

/// Registers and starts the plugins. Both are immutable: they cannot be
/// stopped or reconfigured while the broker runs.
pub async fn start(scx: &ServerContext, config: &Config) -> Result<(), PluginError> {
    rmqtt_retainer::register(scx, true, true)
        .await
        .map_err(|source| PluginError {
            plugin: RETAINER_PLUGIN,
            source,
        })?;
    if config.profile == Profile::Province {
        rmqtt_acl::register(scx, true, true)
            .await
            .map_err(|source| PluginError {
                plugin: ACL_PLUGIN,
                source,
            })?;
    }
    Ok(())
}

/// The ACL rules of a provincial broker. Rules are tried in order and the
/// first match decides. The ACL plugin also decides CONNECT, so the first
/// rule admits every client that passed authentication; the second confines
/// a node to its own subtree (`%u` is the username, which is the
/// certificate's CN); the last denies everything else, including
/// subscriptions to `#`. Password logins are superusers and skip these
/// rules.
pub fn acl_config(province: Province) -> String {
    let node_subtree = format!("{PREFIX}/{province}/node/%u/#");
    let rules = Value::Array(vec![
        rule(&["allow", "all", "connect"], None),
        rule(&["allow", "all", "pubsub"], Some(&node_subtree)),
        rule(&["deny", "all"], None),
    ]);

    let mut table = Table::new();
    // A node publishing outside its subtree is disconnected: it is either
    // broken or compromised, and the broker must not keep serving it.
    table.insert("disconnect_if_pub_rejected".into(), Value::Boolean(true));
    table.insert("rules".into(), rules);
    table.to_string()
}

fn rule(words: &[&str], topic: Option<&str>) -> Value {
    let mut items: Vec<Value> = words
        .iter()
        .map(|w| Value::String((*w).to_string()))
        .collect();
    if let Some(topic) = topic {
        items.push(Value::Array(vec![Value::String(topic.to_string())]));
    }
    Value::Array(items)
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
    table.insert(
        "max_retained_messages".into(),
        Value::Integer(config.retained.max_messages as i64),
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_rules_confine_nodes_to_their_subtree() {
        let text = acl_config(Province::new(44).unwrap());
        let parsed: Table = text.parse().unwrap();
        let rules = parsed["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 3, "{text}");
        assert_eq!(rules[0].to_string(), r#"["allow", "all", "connect"]"#);
        assert!(text.contains("tollway/v1/44/node/%u/#"), "{text}");
        assert_eq!(rules[2].to_string(), r#"["deny", "all"]"#);
    }
}
