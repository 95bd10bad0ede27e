//! The hourly summary a node publishes per gantry, on its `summary` topic.
//!
//! Gantries close each hour with a count and a fee sum. A centre compares them
//! with the records it stored to prove the hour complete, or to request a
//! replay of the sequence range it is missing.

use crate::limits::MAX_SHORT_TEXT_LEN;
use crate::messages::record::is_hour_batch;
use crate::wire::{DecodeError, Invalid, MapReader, MapWriter, Message, check};

/// Keys: 0 gantry_id, 1 hour_batch, 2 count, 3 fee_sum, 4 first_seq, 5 last_seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlySummary {
    pub gantry_id: String,
    /// The hour, `YYYYMMDDHH` in China Standard Time.
    pub hour_batch: u32,
    /// Records of this gantry and hour.
    pub count: u64,
    /// Sum of their `pay_fee`, in fen.
    pub fee_sum: u64,
    /// Lowest and highest node sequence numbers among those records; both
    /// absent when `count` is 0.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

impl Message for HourlySummary {
    const NAME: &'static str = "HourlySummary";
    const MAX_BYTES: usize = 512;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.gantry_id);
        map.field(1, &self.hour_batch);
        map.field(2, &self.count);
        map.field(3, &self.fee_sum);
        map.optional(4, &self.first_seq);
        map.optional(5, &self.last_seq);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        Ok(HourlySummary {
            gantry_id: map.required(0, "gantry_id")?,
            hour_batch: map.required(1, "hour_batch")?,
            count: map.required(2, "count")?,
            fee_sum: map.required(3, "fee_sum")?,
            first_seq: map.optional(4, "first_seq")?,
            last_seq: map.optional(5, "last_seq")?,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        check::text(Self::NAME, "gantry_id", &self.gantry_id, MAX_SHORT_TEXT_LEN)?;
        if !is_hour_batch(self.hour_batch) {
            return Err(Invalid::new(
                Self::NAME,
                "hour_batch",
                format!("{} is not an hour in the form YYYYMMDDHH", self.hour_batch),
            ));
        }
        match (self.count, self.first_seq, self.last_seq) {
            (0, None, None) => Ok(()),
            (count, Some(first), Some(last))
                if count > 0 && first <= last && last - first >= count - 1 =>
            {
                Ok(())
            }
            _ => Err(Invalid::new(
                Self::NAME,
                "first_seq",
                format!(
                    "count {} does not fit the sequence range {:?}..={:?}",
                    self.count, self.first_seq, self.last_seq
                ),
            )),
        }
    }
}
