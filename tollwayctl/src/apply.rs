//! `tollwayctl apply -f FILE` and `tollwayctl delete deployment|rollout NAME`.
//!
//! A file contains one or more documents separated by `---`. A document's
//! top-level `kind:` line names its type, `Deployment` (the default when
//! there is none) or `Rollout`. Each document is validated locally first,
//! with the same rules the controller applies, and an error names the
//! file, line, column and field. Nothing is published unless every
//! document in the file is valid.

use std::path::Path;

use serde::Deserialize;
use tollway_topics::{Deployment, Message, ObjectName, Rollout, Tombstone, Topic};

use crate::connection::Connection;
use crate::locale::text;

/// An operator's object read from a file.
pub enum Object {
    Deployment(Deployment),
    Rollout(Rollout),
}

impl Object {
    /// Returns the object kind as written in `tollwayctl` output: `deployment` or `rollout`.
    fn kind(&self) -> &'static str {
        match self {
            Object::Deployment(_) => "deployment",
            Object::Rollout(_) => "rollout",
        }
    }

    fn name(&self) -> &ObjectName {
        match self {
            Object::Deployment(deployment) => &deployment.name,
            Object::Rollout(rollout) => &rollout.name,
        }
    }

    fn to_yaml(&self) -> String {
        match self {
            Object::Deployment(deployment) => serde_norway::to_string(deployment),
            Object::Rollout(rollout) => serde_norway::to_string(rollout),
        }
        .unwrap_or_default()
    }
}

/// An object read from a file, with its wire form.
pub struct Parsed {
    pub object: Object,
    pub topic: String,
    pub cbor: Vec<u8>,
}

/// The kinds a document may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deployment,
    Rollout,
}

/// Reads and validates every document of `path`.
pub fn parse_file(path: &Path) -> Result<Vec<Parsed>, String> {
    let yaml = std::fs::read_to_string(path).map_err(|err| {
        format!(
            "{}: {} {err}",
            path.display(),
            text("cannot read:", "无法读取：")
        )
    })?;
    let (yaml, kinds) = take_kinds(path, &yaml)?;
    let mut parsed = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(&yaml).enumerate() {
        let place = |err: &serde_norway::Error| match err.location() {
            Some(location) => format!(
                "{}:{}:{}",
                path.display(),
                location.line(),
                location.column()
            ),
            None => format!(
                "{} ({} {})",
                path.display(),
                text("document", "文档"),
                index + 1
            ),
        };
        let kind = kinds.get(index).copied().unwrap_or(Kind::Deployment);
        let object = match kind {
            Kind::Deployment => Deployment::deserialize(document).map(Object::Deployment),
            Kind::Rollout => Rollout::deserialize(document).map(Object::Rollout),
        }
        .map_err(|err| {
            // serde_norway appends the location that `place` already gives.
            let message = err.to_string();
            let message = match message.rfind(" at line ") {
                Some(at) => message[..at].to_string(),
                None => message,
            };
            // A check that runs on the whole object (a selector, say)
            // reports the document's start; the quoted value it names
            // shows the line.
            let place = match quoted_value_position(&yaml, index, &message) {
                Some((line, column)) => format!("{}:{line}:{column}", path.display()),
                None => place(&err),
            };
            format!("{place}: {message}")
        })?;
        let (cbor, topic) = match &object {
            Object::Deployment(deployment) => (
                deployment.to_cbor(),
                Topic::deployment(deployment.name.clone()),
            ),
            Object::Rollout(rollout) => (rollout.to_cbor(), Topic::rollout(rollout.name.clone())),
        };
        let cbor = cbor.map_err(|err| {
            format!(
                "{} ({} {}): {err}",
                path.display(),
                object.kind(),
                object.name()
            )
        })?;
        parsed.push(Parsed {
            object,
            topic: topic.to_string(),
            cbor,
        });
    }
    if parsed.is_empty() {
        return Err(format!(
            "{}: {}",
            path.display(),
            text(
                "the file holds no deployment or rollout",
                "文件中没有 deployment 或 rollout"
            )
        ));
    }
    let mut topics: Vec<&str> = parsed.iter().map(|p| p.topic.as_str()).collect();
    topics.sort_unstable();
    if let Some(pair) = topics.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!(
            "{}: {} {}",
            path.display(),
            text("the file names an object twice:", "文件中对象重复："),
            pair[0]
        ));
    }
    Ok(parsed)
}

/// Returns the 1-based line and column, within document `index` of `yaml`,
/// of the first value that `message` quotes (`"..."`), when the message
/// quotes one and the document contains it exactly once.
fn quoted_value_position(yaml: &str, index: usize, message: &str) -> Option<(usize, usize)> {
    let start = message.find('"')? + 1;
    let length = message[start..].find('"')?;
    let quoted = &message[start..start + length];
    if quoted.is_empty() {
        return None;
    }

    let mut document = 0;
    let mut found = None;
    for (number, line) in yaml.lines().enumerate() {
        if line.starts_with("---") {
            if number > 0 {
                document += 1;
            }
            continue;
        }
        if document != index {
            continue;
        }
        if let Some(column) = line.find(quoted) {
            if found.is_some() {
                return None;
            }
            found = Some((number + 1, column + 1));
        }
    }
    found
}

/// Reads each document's top-level `kind:` line and blanks it (keeping the
/// line numbers), because the object types reject unknown keys. Returns
/// the text and the kind of each document in order.
fn take_kinds(path: &Path, yaml: &str) -> Result<(String, Vec<Kind>), String> {
    let mut kinds = Vec::new();
    let mut current: Option<Kind> = None;
    let mut has_content = false;
    let mut out = String::with_capacity(yaml.len());
    for (number, line) in yaml.lines().enumerate() {
        if line.starts_with("---") {
            if has_content {
                kinds.push(current.take().unwrap_or(Kind::Deployment));
            }
            current = None;
            has_content = false;
            out.push_str(line);
        } else if let Some(value) = line.strip_prefix("kind:") {
            let value = value.split('#').next().unwrap_or("").trim();
            let kind = match value.trim_matches(|c| c == '"' || c == '\'') {
                "Deployment" => Kind::Deployment,
                "Rollout" => Kind::Rollout,
                other => {
                    return Err(format!(
                        "{}:{}:1: {} {other:?}; {}",
                        path.display(),
                        number + 1,
                        text("unknown kind", "未知的 kind"),
                        text(
                            "expected Deployment or Rollout",
                            "应为 Deployment 或 Rollout"
                        )
                    ));
                }
            };
            current = Some(kind);
            has_content = true;
            out.push('#');
        } else {
            let trimmed = line.trim();
            if !trimmed.is_empty() && !trimmed.starts_with('#') {
                has_content = true;
            }
            out.push_str(line);
        }
        out.push('\n');
    }
    if has_content {
        kinds.push(current.unwrap_or(Kind::Deployment));
    }
    Ok((out, kinds))
}

/// Validates the file and publishes it, or with `dry_run` prints what
/// would be published without connecting.
pub fn apply(path: &Path, dry_run: bool, connection: &Connection) -> Result<String, String> {
    let parsed = parse_file(path)?;
    if dry_run {
        let mut out = String::new();
        for item in &parsed {
            let yaml = item.object.to_yaml();
            out.push_str(&format!(
                "# {} {} ({} {})\n{yaml}---\n",
                text("would publish retained to", "将以 retained 方式发布到"),
                item.topic,
                item.cbor.len(),
                text("bytes of CBOR", "字节 CBOR"),
            ));
        }
        out.push_str(text(
            "dry run: nothing was published",
            "试运行：未发布任何内容",
        ));
        return Ok(out);
    }

    let messages: Vec<(String, Vec<u8>)> = parsed
        .iter()
        .map(|item| (item.topic.clone(), item.cbor.clone()))
        .collect();
    connection.publish_retained(&messages)?;
    let lines: Vec<String> = parsed
        .iter()
        .map(|item| {
            format!(
                "{}/{} {}",
                item.object.kind(),
                item.object.name(),
                text("published", "已发布")
            )
        })
        .collect();
    Ok(lines.join("\n"))
}

/// Deletes a deployment or rollout: a [`Tombstone`] retained on its topic,
/// so that a controller disconnected now still receives the delete later.
///
/// A name missing from the controller's listing is rejected unless
/// `force`, so that a typo does not look like a delete. When the
/// controller cannot be asked (it is stopped, say), the delete goes ahead:
/// the tombstone reaches it when it is back.
pub fn delete(
    rollout: bool,
    name: &str,
    force: bool,
    connection: &Connection,
) -> Result<String, String> {
    let name = ObjectName::new(name).map_err(|err| err.to_string())?;
    let (kind, topic) = if rollout {
        ("rollout", Topic::rollout(name.clone()))
    } else {
        ("deployment", Topic::deployment(name.clone()))
    };
    if !force && controller_lacks(rollout, &name, connection) {
        return Err(format!(
            "{kind}/{name}: {} {}; {}",
            text("not known to the controller at", "控制器中没有此对象："),
            connection.controller_url,
            text(
                "nothing published. Check the name with `tollwayctl get deployments` (or `rollout status`), or pass --force",
                "未发布任何内容。请用 `tollwayctl get deployments`（或 `rollout status`）核对名称，或加 --force"
            )
        ));
    }
    let deleted_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    let tombstone = Tombstone {
        name: name.clone(),
        deleted_at_ms,
    }
    .to_cbor()
    .map_err(|err| err.to_string())?;
    connection.publish_retained(&[(topic.to_string(), tombstone)])?;
    Ok(format!("{kind}/{name} {}", text("deleted", "已删除")))
}

/// Returns true only when the controller's API responded and does not
/// list `name`; false when it lists it or does not respond.
fn controller_lacks(rollout: bool, name: &ObjectName, connection: &Connection) -> bool {
    let listing = if rollout {
        "/v1/rollouts"
    } else {
        "/v1/deployments"
    };
    match connection.controller_get(listing) {
        Ok(objects) => objects
            .as_array()
            .is_some_and(|objects| !objects.iter().any(|object| object["name"] == name.as_str())),
        Err(_) => false,
    }
}
