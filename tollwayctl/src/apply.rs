//! `tollwayctl apply -f FILE` and `tollwayctl delete deployment NAME`.
//!
//! A file contains one or more deployment documents separated by `---`. Each
//! is validated locally first, with the same rules the controller applies,
//! and an error names the file, line, column and field. Nothing is
//! published unless every document in the file is valid.

use std::path::Path;

use serde::Deserialize;
use tollway_topics::{Deployment, Message, ObjectName, Topic};

use crate::connection::Connection;
use crate::locale::text;

/// A deployment read from a file, with its wire form.
pub struct Parsed {
    pub deployment: Deployment,
    pub topic: String,
    pub cbor: Vec<u8>,
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
    let mut parsed = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(&yaml).enumerate() {
        let deployment = Deployment::deserialize(document).map_err(|err| {
            let place = match err.location() {
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
            format!("{place}: {err}")
        })?;
        let cbor = deployment.to_cbor().map_err(|err| {
            format!(
                "{} ({} {}): {err}",
                path.display(),
                text("deployment", "deployment"),
                deployment.name
            )
        })?;
        let topic = Topic::deployment(deployment.name.clone()).to_string();
        parsed.push(Parsed {
            deployment,
            topic,
            cbor,
        });
    }
    if parsed.is_empty() {
        return Err(format!(
            "{}: {}",
            path.display(),
            text("the file holds no deployment", "文件中没有 deployment")
        ));
    }
    let mut names: Vec<&str> = parsed.iter().map(|p| p.deployment.name.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!(
            "{}: {} {}",
            path.display(),
            text(
                "the file names deployment twice:",
                "文件中 deployment 名称重复："
            ),
            pair[0]
        ));
    }
    Ok(parsed)
}

/// Validates the file and publishes it, or with `dry_run` prints what
/// would be published without connecting.
pub fn apply(path: &Path, dry_run: bool, connection: &Connection) -> Result<String, String> {
    let parsed = parse_file(path)?;
    if dry_run {
        let mut out = String::new();
        for item in &parsed {
            let yaml = serde_norway::to_string(&item.deployment).unwrap_or_default();
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
                "deployment/{} {}",
                item.deployment.name,
                text("published", "已发布")
            )
        })
        .collect();
    Ok(lines.join("\n"))
}

/// Deletes a deployment: an empty retained payload on its topic.
pub fn delete(name: &str, connection: &Connection) -> Result<String, String> {
    let name = ObjectName::new(name).map_err(|err| err.to_string())?;
    let topic = Topic::deployment(name.clone()).to_string();
    connection.publish_retained(&[(topic, Vec::new())])?;
    Ok(format!("deployment/{name} {}", text("deleted", "已删除")))
}
