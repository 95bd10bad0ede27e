//! A toll record: one gantry transaction.
//!
//! Field names and codes follow the gantry transaction record of China's
//! national ETC network (JTG 6310-2022). Money is integer fen, times are Unix
//! milliseconds, and plates are UTF-8 as printed (京A12345, 粤B·D12345).
//! A record carries no node id or sequence number: its batch supplies both.

use crate::limits::{MAX_PLATE_LEN, MAX_SHORT_TEXT_LEN, MAX_TOLL_INTERVALS};
use crate::wire::{DecodeError, Invalid, MapReader, MapWriter, Message, check};

/// One gantry transaction.
///
/// Keys: 0 transaction_id, 1 gantry_id, 2 pass_time_ms, 3 media_type,
/// 4 media_id, 5 plate, 6 plate_colour, 7 vehicle_type, 8 vehicle_class,
/// 9 axle_count, 10 fee, 11 pay_fee, 12 discount_fee, 13 toll_intervals,
/// 14 trade_result, 15 antenna_id, 16 hour_batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TollRecord {
    /// Transaction id assigned by the gantry, unique nationwide. Treated as
    /// opaque text: no layout inside it is parsed or checked.
    pub transaction_id: String,
    /// The charging gantry, e.g. `G001544001000110010`.
    pub gantry_id: String,
    /// Time the vehicle passed the gantry, Unix milliseconds.
    pub pass_time_ms: u64,
    pub media_type: MediaType,
    /// OBU serial number or CPC card id, as the 64-bit number printed in hex.
    pub media_id: u64,
    /// Plate number in UTF-8; empty when the plate could not be read.
    pub plate: String,
    pub plate_colour: PlateColour,
    pub vehicle_type: VehicleType,
    pub vehicle_class: VehicleClass,
    /// Axle count; 0 when unknown.
    pub axle_count: u8,
    /// Fee due at this gantry before discount, in fen.
    pub fee: u32,
    /// Fee actually charged, in fen.
    pub pay_fee: u32,
    /// Discount granted, in fen (fee = pay_fee + discount_fee).
    pub discount_fee: u32,
    /// Toll interval ids charged by this transaction (default: none).
    pub toll_intervals: Vec<String>,
    pub trade_result: TradeResult,
    /// Roadside unit antenna that completed the trade.
    pub antenna_id: u8,
    /// Hour batch number, `YYYYMMDDHH` in China Standard Time, e.g. 2026120412.
    pub hour_batch: u32,
}

impl Message for TollRecord {
    const NAME: &'static str = "TollRecord";
    const MAX_BYTES: usize = crate::limits::MAX_SMALL_MESSAGE_BYTES;

    fn write_fields(&self, map: &mut MapWriter) {
        map.field(0, &self.transaction_id);
        map.field(1, &self.gantry_id);
        map.field(2, &self.pass_time_ms);
        map.field(3, &self.media_type.code());
        map.field(4, &self.media_id);
        map.field(5, &self.plate);
        map.field(6, &self.plate_colour.code());
        map.field(7, &self.vehicle_type.code());
        map.unless_default(8, &self.vehicle_class.code());
        map.unless_default(9, &self.axle_count);
        map.field(10, &self.fee);
        map.field(11, &self.pay_fee);
        map.unless_default(12, &self.discount_fee);
        if !self.toll_intervals.is_empty() {
            map.field(13, &self.toll_intervals);
        }
        map.unless_default(14, &self.trade_result.code());
        map.unless_default(15, &self.antenna_id);
        map.field(16, &self.hour_batch);
    }

    fn read_fields(map: &MapReader<'_>) -> Result<Self, DecodeError> {
        let missing = |key, field| DecodeError::MissingField {
            message: Self::NAME,
            field,
            key,
        };
        Ok(TollRecord {
            transaction_id: map.required(0, "transaction_id")?,
            gantry_id: map.required(1, "gantry_id")?,
            pass_time_ms: map.required(2, "pass_time_ms")?,
            media_type: map
                .code(3, "media_type", MediaType::EXPECTED, MediaType::from_code)?
                .ok_or_else(|| missing(3, "media_type"))?,
            media_id: map.required(4, "media_id")?,
            plate: map.required(5, "plate")?,
            plate_colour: map
                .code(
                    6,
                    "plate_colour",
                    PlateColour::EXPECTED,
                    PlateColour::from_code,
                )?
                .ok_or_else(|| missing(6, "plate_colour"))?,
            vehicle_type: map
                .code(
                    7,
                    "vehicle_type",
                    VehicleType::EXPECTED,
                    VehicleType::from_code,
                )?
                .ok_or_else(|| missing(7, "vehicle_type"))?,
            vehicle_class: map
                .code(
                    8,
                    "vehicle_class",
                    VehicleClass::EXPECTED,
                    VehicleClass::from_code,
                )?
                .unwrap_or_default(),
            axle_count: map.or_default(9, "axle_count")?,
            fee: map.required(10, "fee")?,
            pay_fee: map.required(11, "pay_fee")?,
            discount_fee: map.or_default(12, "discount_fee")?,
            toll_intervals: map.or_default(13, "toll_intervals")?,
            trade_result: map
                .code(
                    14,
                    "trade_result",
                    TradeResult::EXPECTED,
                    TradeResult::from_code,
                )?
                .unwrap_or_default(),
            antenna_id: map.or_default(15, "antenna_id")?,
            hour_batch: map.required(16, "hour_batch")?,
        })
    }

    fn validate(&self) -> Result<(), Invalid> {
        let name = Self::NAME;
        check::text(
            name,
            "transaction_id",
            &self.transaction_id,
            MAX_SHORT_TEXT_LEN,
        )?;
        check::text(name, "gantry_id", &self.gantry_id, MAX_SHORT_TEXT_LEN)?;
        check::max_len(name, "plate", &self.plate, MAX_PLATE_LEN)?;
        check::count(
            name,
            "toll_intervals",
            self.toll_intervals.len(),
            MAX_TOLL_INTERVALS,
        )?;
        for interval in &self.toll_intervals {
            check::text(name, "toll_intervals", interval, MAX_SHORT_TEXT_LEN)?;
        }

        if u64::from(self.pay_fee) + u64::from(self.discount_fee) != u64::from(self.fee) {
            return Err(Invalid::new(
                name,
                "pay_fee",
                format!(
                    "pay_fee {} + discount_fee {} does not equal fee {}",
                    self.pay_fee, self.discount_fee, self.fee
                ),
            ));
        }
        if !is_hour_batch(self.hour_batch) {
            return Err(Invalid::new(
                name,
                "hour_batch",
                format!("{} is not an hour in the form YYYYMMDDHH", self.hour_batch),
            ));
        }
        Ok(())
    }
}

/// Returns the hour batch `YYYYMMDDHH` in China Standard Time (UTC+8, no
/// daylight saving) of a moment in Unix milliseconds.
pub fn hour_batch_at(unix_ms: u64) -> u32 {
    let local_s = unix_ms / 1000 + 8 * 3600;
    let (year, month, day) = civil_from_days(local_s / 86_400);
    let hour = (local_s % 86_400 / 3600) as u32;
    year * 1_000_000 + month * 10_000 + day * 100 + hour
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month,
/// day), with Howard Hinnant's `civil_from_days` algorithm for days on or
/// after the epoch.
fn civil_from_days(days: u64) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400) as u32 + u32::from(month <= 2);
    (year, month, day)
}

/// Reports whether `value` reads as `YYYYMMDDHH` with a plausible date.
pub(crate) fn is_hour_batch(value: u32) -> bool {
    let hour = value % 100;
    let day = value / 100 % 100;
    let month = value / 10_000 % 100;
    let year = value / 1_000_000;
    (2000..=2199).contains(&year)
        && (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour < 24
}

/// Declares a code enum: its variants, their numeric codes and the text that
/// an unknown-code error lists. The `#[default]` variant is what a decoder
/// fills in when an optional code is missing.
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        $name:ident, expected $expected:literal {
            $($(#[$vmeta:meta])* $variant:ident = $code:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $(
                $(#[$vmeta])*
                $variant,
            )+
        }

        impl $name {
            /// The valid codes, for error messages.
            pub const EXPECTED: &'static str = $expected;

            /// All variants, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn code(self) -> u8 {
                match self {
                    $($name::$variant => $code,)+
                }
            }

            pub fn from_code(code: u64) -> Option<Self> {
                match code {
                    $($code => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

pub(crate) use code_enum;

code_enum! {
    /// The payment medium: an OBU (on-board unit) or a CPC pass card.
    MediaType, expected "1 (OBU), 2 (CPC card)" {
        #[default]
        Obu = 1,
        Cpc = 2,
    }
}

code_enum! {
    /// Plate colour codes of the national standard.
    PlateColour, expected "0 (blue) to 6 (blue-white)" {
        #[default]
        Blue = 0,
        Yellow = 1,
        Black = 2,
        White = 3,
        GradientGreen = 4,
        YellowGreen = 5,
        BlueWhite = 6,
    }
}

code_enum! {
    /// Vehicle type codes: 1-6 passenger, 11-16 truck, 21-26 special operation.
    VehicleType, expected "1-6 (passenger), 11-16 (truck), 21-26 (special)" {
        #[default]
        Passenger1 = 1,
        Passenger2 = 2,
        Passenger3 = 3,
        Passenger4 = 4,
        Passenger5 = 5,
        Passenger6 = 6,
        Truck1 = 11,
        Truck2 = 12,
        Truck3 = 13,
        Truck4 = 14,
        Truck5 = 15,
        Truck6 = 16,
        Special1 = 21,
        Special2 = 22,
        Special3 = 23,
        Special4 = 24,
        Special5 = 25,
        Special6 = 26,
    }
}

code_enum! {
    /// Vehicle class codes: who the vehicle is, which decides exemptions.
    ///
    /// NOTE: these codes were written from the published ETC code tables as
    /// recalled, not checked against the text of JTG 6310-2022; verify them
    /// before a province relies on them for exemptions.
    VehicleClass, expected "0 (ordinary), 8 (military), 10 (police), 12 (emergency), 14 (convoy), 21 (green channel), 22 (harvester), 23 (rescue), 24 (container), 25 (large transport)" {
        #[default]
        Ordinary = 0,
        Military = 8,
        Police = 10,
        Emergency = 12,
        Convoy = 14,
        GreenChannel = 21,
        Harvester = 22,
        Rescue = 23,
        Container = 24,
        LargeTransport = 25,
    }
}

code_enum! {
    /// Outcome of the trade between the gantry and the medium.
    TradeResult, expected "0 (success), 1 (failed)" {
        #[default]
        Success = 0,
        Failed = 1,
    }
}

impl VehicleType {
    pub fn is_truck(self) -> bool {
        (11..=16).contains(&self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_batch_at_uses_china_standard_time() {
        // 2026-12-04T23:30:00Z is 07:30 on 5 December in Beijing.
        assert_eq!(hour_batch_at(1_796_427_000_000), 2026120507);
        // 2024-02-28T16:00:00Z is midnight of the leap day.
        assert_eq!(hour_batch_at(1_709_136_000_000), 2024022900);
        // 1999-12-31T16:00:00Z is midnight of 2000-01-01.
        assert_eq!(hour_batch_at(946_656_000_000), 2000010100);
        assert_eq!(hour_batch_at(0), 1970010108);
    }

    #[test]
    fn hour_batch_accepts_real_hours_only() {
        assert!(is_hour_batch(2026120400));
        assert!(is_hour_batch(2026123123));
        for bad in [0, 2026120424, 2026130100, 2026120012, 1999123100] {
            assert!(!is_hour_batch(bad), "{bad} was accepted");
        }
    }

    #[test]
    fn codes_round_trip() {
        for colour in PlateColour::ALL {
            assert_eq!(PlateColour::from_code(colour.code().into()), Some(*colour));
        }
        for vehicle in VehicleType::ALL {
            assert_eq!(
                VehicleType::from_code(vehicle.code().into()),
                Some(*vehicle)
            );
        }
        assert_eq!(VehicleType::from_code(7), None);
        assert_eq!(PlateColour::from_code(7), None);
    }
}
