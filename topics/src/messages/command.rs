//! Commands that are not state, on a node's `cmd` topic, and their results
//! on `cmd/result`.
//!
//! Commands are not retained. A node that is offline when one is sent misses
//! it, and the centre sends it again while the cause remains (the next
//! reconciliation requests a missing range again).

use crate::limits::{MAX_COMMAND_OUTPUT, MAX_NAME_LEN, MAX_TEXT_LEN};
use crate::messages::record::is_hour_batch;
use crate::wire::{DecodeError, Invalid, MapReader, MapWriter, Message, check};

/// A command to one node.
///
/// Keys: 0 id, 1 action code (1 replay, 2 collect logs, 3 resend summary),
/// 2 from_seq, 3 to_seq, 4 app, 5 tail_lines, 6 hour_batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Chosen by the sender; the result carries it back.
    pub id: u64,
    pub action: CommandAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandAction {
    /// Send the records `from_seq..=to_seq` again, from the outbox's
    /// retention window.
    Replay { from_seq: u64, to_seq: u64 },
    /// Return the last `tail_lines` lines of an app's log.
    CollectLogs { app: String, tail_lines: u32 },
    /// Publish the hourly summaries of one hour again.
    ResendSummary { hour_batch: u32 },
}

const ACTION_CODES: &str = "1 (replay), 2 (collect logs), 3 (resend summary)";

impl Message for Command {
    const NAME: &'static str = "Command";
    const MAX_BYTES: usize = 1024;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.id);
        match &self.action {
            CommandAction::Replay { from_seq, to_seq } => {
                map.field(1, &1u8);
                map.field(2, from_seq);
                map.field(3, to_seq);
            }
            CommandAction::CollectLogs { app, tail_lines } => {
                map.field(1, &2u8);
                map.field(4, app);
                map.field(5, tail_lines);
            }
            CommandAction::ResendSummary { hour_batch } => {
                map.field(1, &3u8);
                map.field(6, hour_batch);
            }
        }
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        let id = map.required(0, "id")?;
        let code: u64 = map.required(1, "action")?;
        let action = match code {
            1 => CommandAction::Replay {
                from_seq: map.required(2, "from_seq")?,
                to_seq: map.required(3, "to_seq")?,
            },
            2 => CommandAction::CollectLogs {
                app: map.required(4, "app")?,
                tail_lines: map.required(5, "tail_lines")?,
            },
            3 => CommandAction::ResendSummary {
                hour_batch: map.required(6, "hour_batch")?,
            },
            code => {
                return Err(DecodeError::UnknownCode {
                    message: Self::NAME,
                    field: "action",
                    code,
                    expected: ACTION_CODES,
                });
            }
        };
        Ok(Command { id, action })
    }

    fn validate(&self) -> Result<(), Invalid> {
        match &self.action {
            CommandAction::Replay { from_seq, to_seq } => {
                if *from_seq == 0 || from_seq > to_seq {
                    return Err(Invalid::new(
                        Self::NAME,
                        "from_seq",
                        format!("replay range {from_seq}..={to_seq} is empty or starts at 0"),
                    ));
                }
                Ok(())
            }
            CommandAction::CollectLogs { app, .. } => {
                check::text(Self::NAME, "app", app, MAX_NAME_LEN)
            }
            CommandAction::ResendSummary { hour_batch } => {
                if is_hour_batch(*hour_batch) {
                    Ok(())
                } else {
                    Err(Invalid::new(
                        Self::NAME,
                        "hour_batch",
                        format!("{hour_batch} is not an hour in the form YYYYMMDDHH"),
                    ))
                }
            }
        }
    }
}

/// The outcome of a command. Keys: 0 id, 1 ok, 2 message, 3 output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResult {
    pub id: u64,
    pub ok: bool,
    /// The outcome in words, for operators, e.g. the reason a replay range is gone.
    pub message: Option<String>,
    /// Command output such as collected log lines.
    pub output: Option<String>,
}

impl Message for CommandResult {
    const NAME: &'static str = "CommandResult";
    const MAX_BYTES: usize = MAX_COMMAND_OUTPUT + MAX_TEXT_LEN + 64;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.id);
        map.field(1, &self.ok);
        map.optional(2, &self.message);
        map.optional(3, &self.output);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        Ok(CommandResult {
            id: map.required(0, "id")?,
            ok: map.required(1, "ok")?,
            message: map.optional(2, "message")?,
            output: map.optional(3, "output")?,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        if let Some(message) = &self.message {
            check::max_len(Self::NAME, "message", message, MAX_TEXT_LEN)?;
        }
        if let Some(output) = &self.output {
            check::max_len(Self::NAME, "output", output, MAX_COMMAND_OUTPUT)?;
        }
        Ok(())
    }
}
