//! Commands from the centre on the node's `cmd` topic. Each one gets a
//! `CommandResult` on `cmd/result`.
//!
//! - Replay: sends the records `from_seq..=to_seq` again from the outbox's
//!   retention window, on the `records` topic. A range that was pruned (or
//!   not yet appended) is refused with the range that is retained.
//! - ResendSummary: publishes the stored hourly summaries of one hour again.
//! - CollectLogs: answered as not supported.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tollway_runtime::{Backoff, BackoffConfig, CancellationToken};
use tollway_topics::{Command, CommandAction, CommandResult, Message, NodeKind};

use crate::link::{LinkHandle, PublishError};
use crate::outbox::{BatchLimits, Outbox};

/// The `commands` section of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    /// Records one replay command may request at most; a larger range is
    /// refused, and the centre requests it in parts. Default 100,000.
    #[serde(default = "default_max_replay_records")]
    pub max_replay_records: u64,
    /// Commands received and waiting for the command task, at most. A
    /// command beyond it is dropped with a warning. Default 16.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_max_replay_records() -> u64 {
    100_000
}

fn default_queue() -> usize {
    16
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            max_replay_records: default_max_replay_records(),
            queue: default_queue(),
        }
    }
}

impl CommandsConfig {
    /// Lists every setting that is out of range, each starting with its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_replay_records == 0 {
            problems.push("max_replay_records must be at least 1".to_string());
        }
        if self.queue == 0 {
            problems.push("queue must be at least 1".to_string());
        }
        problems
    }
}

/// Back-off while the link's queue is full during a replay.
const REPLAY_RETRY: BackoffConfig =
    BackoffConfig::new(Duration::from_millis(50), Duration::from_secs(2));

/// Handles commands until `cancel` fires or the link's sender is dropped.
pub async fn run_commands(
    outbox: Arc<Outbox>,
    link: LinkHandle,
    mut commands: mpsc::Receiver<Vec<u8>>,
    limits: BatchLimits,
    config: CommandsConfig,
    cancel: CancellationToken,
) {
    let handler = Handler {
        outbox,
        link,
        limits,
        config,
    };
    loop {
        let payload = tokio::select! {
            _ = cancel.cancelled() => break,
            payload = commands.recv() => match payload {
                Some(payload) => payload,
                None => break,
            },
        };
        let command = match Command::from_cbor(&payload) {
            Ok(command) => command,
            Err(err) => {
                // Without a valid id there is no result to send.
                tracing::warn!(node = %handler.link.node(), error = %err, "ignoring an invalid command");
                continue;
            }
        };
        let result = handler.handle(&command, &cancel).await;
        handler.send_result(result);
    }
    tracing::debug!("command task stopped");
}

struct Handler {
    outbox: Arc<Outbox>,
    link: LinkHandle,
    limits: BatchLimits,
    config: CommandsConfig,
}

impl Handler {
    async fn handle(&self, command: &Command, cancel: &CancellationToken) -> CommandResult {
        let node = self.link.node();
        tracing::info!(node = %node, id = command.id, action = ?command.action, "command received");
        let outcome = match &command.action {
            CommandAction::Replay { from_seq, to_seq } => {
                self.replay(*from_seq, *to_seq, cancel).await
            }
            CommandAction::ResendSummary { hour_batch } => self.resend_summary(*hour_batch),
            // NOTE: log collection belongs to the app manager, which does
            // not offer it yet, so the command fails with a clear message
            // instead of returning empty output.
            CommandAction::CollectLogs { app, .. } => Err(format!(
                "collect logs is not supported yet by this daemon (app {app:?})"
            )),
        };
        match outcome {
            Ok(message) => CommandResult {
                id: command.id,
                ok: true,
                message: Some(message),
                output: None,
            },
            Err(message) => {
                tracing::warn!(node = %node, id = command.id, reason = %message, "command failed");
                CommandResult {
                    id: command.id,
                    ok: false,
                    message: Some(message),
                    output: None,
                }
            }
        }
    }

    /// Publishes the records `from..=to` in batches, waiting while the
    /// link's queue is full. Fails at once if any of the range is not
    /// retained, and stops if the link goes down.
    async fn replay(
        &self,
        from: u64,
        to: u64,
        cancel: &CancellationToken,
    ) -> Result<String, String> {
        let requested = to.saturating_sub(from).saturating_add(1);
        if requested > self.config.max_replay_records {
            return Err(format!(
                "replay of seq {from}..={to} asks for {requested} records; at most {} per command, request it in parts",
                self.config.max_replay_records
            ));
        }
        // Check the whole range first, so a pruned range sends nothing.
        let stats = self
            .outbox
            .stats(std::time::SystemTime::now())
            .map_err(|err| err.to_string())?;
        if from < stats.first_retained || to >= stats.next_seq {
            return Err(format!(
                "seq {from}..={to} is not retained (retained: {}..={})",
                stats.first_retained,
                stats.next_seq - 1
            ));
        }

        let mut next = from;
        let mut batches = 0u64;
        while next <= to {
            let outbox = Arc::clone(&self.outbox);
            let limits = self.limits;
            let batch = tokio::task::spawn_blocking(move || outbox.read_range(next, to, limits))
                .await
                .map_err(|err| format!("replay read task failed: {err}"))?
                .map_err(|err| err.to_string())?;
            let last = batch.last_seq().unwrap_or(next);
            let mut batch = batch;
            batch.compression = tollway_topics::Compression::Zstd;
            let payload = batch.to_cbor().map_err(|err| err.to_string())?;
            self.publish_patiently(NodeKind::Records, payload, cancel)
                .await
                .map_err(|err| format!("replay stopped after seq {}: {err}", next - 1))?;
            batches += 1;
            next = last + 1;
        }
        Ok(format!("replayed seq {from}..={to} in {batches} batches"))
    }

    fn resend_summary(&self, hour_batch: u32) -> Result<String, String> {
        let summaries = self
            .outbox
            .summaries_of_hour(hour_batch)
            .map_err(|err| err.to_string())?;
        for summary in &summaries {
            let payload = summary.to_cbor().map_err(|err| err.to_string())?;
            self.link
                .publish(NodeKind::Summary, payload)
                .map_err(|err| err.to_string())?;
        }
        Ok(format!(
            "resent {} summaries of hour {hour_batch}",
            summaries.len()
        ))
    }

    /// Publishes, retrying with back-off while the client's queue is full.
    async fn publish_patiently(
        &self,
        kind: NodeKind,
        payload: Vec<u8>,
        cancel: &CancellationToken,
    ) -> Result<(), PublishError> {
        let mut backoff = Backoff::new(REPLAY_RETRY);
        loop {
            match self.link.publish(kind, payload.clone()) {
                Err(PublishError::Busy { .. }) if !cancel.is_cancelled() => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                other => return other,
            }
        }
    }

    fn send_result(&self, result: CommandResult) {
        let id = result.id;
        let sent = result
            .to_cbor()
            .map_err(|err| err.to_string())
            .and_then(|payload| {
                self.link
                    .publish(NodeKind::CommandResult, payload)
                    .map_err(|err| err.to_string())
            });
        if let Err(err) = sent {
            tracing::warn!(node = %self.link.node(), id, error = %err, "cannot send the command result");
        }
    }
}
