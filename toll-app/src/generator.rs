//! Realistic gantry transactions: plates with province prefixes and
//! colours, vehicle types and classes, fees in fen, OBU and CPC media, and
//! hour batch numbers in China Standard Time.
//!
//! The mix is an estimate of ordinary expressway traffic (about four in five
//! vehicles are small passenger cars, nine in ten pay by OBU), not a
//! measured distribution.

use rand::Rng;
use rand::rngs::StdRng;
use time::{OffsetDateTime, UtcOffset};
use tollway_topics::{
    MediaType, PlateColour, TollRecord, TradeResult, VehicleClass, VehicleType, hour_batch_at,
};

/// Discount on OBU payments, in percent: the national ETC discount.
const OBU_DISCOUNT_PCT: u32 = 5;

/// Letters that appear on Chinese plates (I and O are never used).
const PLATE_LETTERS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";

/// Produces the transactions of one gantry.
pub struct Generator {
    gantry_id: String,
    /// Plate prefix of the gantry's own province, e.g. 粤 for 44.
    home_prefix: &'static str,
    toll_interval: String,
    /// Transactions produced so far; part of each transaction id.
    serial: u64,
    rng: StdRng,
}

impl Generator {
    pub fn new(gantry_id: String, province: u8, rng: StdRng) -> Self {
        // A gantry's toll interval id is its id without the two-digit
        // direction and lane suffix.
        let toll_interval = gantry_id
            .get(..gantry_id.len().saturating_sub(2))
            .unwrap_or(&gantry_id)
            .to_string();
        Generator {
            gantry_id,
            home_prefix: province_prefix(province).unwrap_or("京"),
            toll_interval,
            serial: 0,
            rng,
        }
    }

    /// Produces the next transaction, passing the gantry at `now_ms`.
    pub fn next_record(&mut self, now_ms: u64) -> TollRecord {
        self.serial += 1;
        let vehicle_type = self.vehicle_type();
        let new_energy = self.rng.random_ratio(1, 5);
        let plate_colour = plate_colour(vehicle_type, new_energy);
        let plate = self.plate(new_energy);

        let media_type = if self.rng.random_ratio(9, 10) {
            MediaType::Obu
        } else {
            MediaType::Cpc
        };
        let fee = self.fee(vehicle_type);
        let discount_fee = match media_type {
            MediaType::Obu => fee * OBU_DISCOUNT_PCT / 100,
            MediaType::Cpc => 0,
        };

        let local = local_time(now_ms);
        TollRecord {
            transaction_id: format!(
                "{}{:04}{:02}{:02}{:02}{:02}{:02}{:06}",
                self.gantry_id,
                local.year(),
                u8::from(local.month()),
                local.day(),
                local.hour(),
                local.minute(),
                local.second(),
                self.serial % 1_000_000
            ),
            gantry_id: self.gantry_id.clone(),
            pass_time_ms: now_ms,
            media_type,
            media_id: self.media_id(media_type),
            plate,
            plate_colour,
            vehicle_type,
            vehicle_class: self.vehicle_class(),
            axle_count: axle_count(vehicle_type),
            fee,
            pay_fee: fee - discount_fee,
            discount_fee,
            toll_intervals: vec![self.toll_interval.clone()],
            trade_result: if self.rng.random_ratio(1, 200) {
                TradeResult::Failed
            } else {
                TradeResult::Success
            },
            antenna_id: self.rng.random_range(1..=8),
            hour_batch: hour_batch_at(now_ms),
        }
    }

    fn vehicle_type(&mut self) -> VehicleType {
        match self.rng.random_range(0..100) {
            0..80 => VehicleType::Passenger1,
            80..84 => VehicleType::Passenger2,
            84..86 => VehicleType::Passenger3,
            86..88 => VehicleType::Passenger4,
            88..91 => VehicleType::Truck1,
            91..93 => VehicleType::Truck2,
            93..95 => VehicleType::Truck3,
            95..97 => VehicleType::Truck4,
            97..99 => VehicleType::Truck5,
            _ => VehicleType::Special1,
        }
    }

    /// Rare vehicle classes that carry exemptions; almost all are ordinary.
    fn vehicle_class(&mut self) -> VehicleClass {
        match self.rng.random_range(0..1000) {
            0..3 => VehicleClass::GreenChannel,
            3..5 => VehicleClass::Emergency,
            5..6 => VehicleClass::Police,
            6..8 => VehicleClass::Container,
            _ => VehicleClass::Ordinary,
        }
    }

    /// Nine in ten vehicles are local; the rest come from other provinces.
    fn plate(&mut self, new_energy: bool) -> String {
        let prefix = if self.rng.random_ratio(9, 10) {
            self.home_prefix
        } else {
            PROVINCE_PREFIXES[self.rng.random_range(0..PROVINCE_PREFIXES.len())].1
        };
        let city = PLATE_LETTERS[self.rng.random_range(0..PLATE_LETTERS.len())] as char;
        // New-energy plates have six characters after the city letter and
        // start with D (battery) or F (hybrid); others have five.
        let mut tail = String::new();
        if new_energy {
            tail.push(if self.rng.random_bool(0.7) { 'D' } else { 'F' });
        }
        for _ in 0..5 {
            if self.rng.random_ratio(1, 4) {
                tail.push(PLATE_LETTERS[self.rng.random_range(0..PLATE_LETTERS.len())] as char);
            } else {
                tail.push(char::from(b'0' + self.rng.random_range(0..10u8)));
            }
        }
        format!("{prefix}{city}{tail}")
    }

    /// Fee for one toll interval, in fen, by vehicle type. A passenger car
    /// pays about 0.45 yuan per kilometre over a 5 to 15 km interval.
    fn fee(&mut self, vehicle_type: VehicleType) -> u32 {
        let km = self.rng.random_range(5..=15);
        let fen_per_km = match vehicle_type.code() {
            1 => 45,
            2 => 70,
            3 | 4 => 95,
            11 => 50,
            12 => 90,
            13 => 120,
            14 => 130,
            15 | 16 => 150,
            _ => 60,
        };
        km * fen_per_km
    }

    /// Draws an OBU serial or CPC card id with the province code in the top
    /// two bytes.
    fn media_id(&mut self, media_type: MediaType) -> u64 {
        let kind: u64 = match media_type {
            MediaType::Obu => 0x23,
            MediaType::Cpc => 0x99,
        };
        (0x4401 << 48) | (kind << 40) | self.rng.random_range(0..1u64 << 40)
    }
}

fn plate_colour(vehicle_type: VehicleType, new_energy: bool) -> PlateColour {
    let large = vehicle_type.is_truck() || vehicle_type.code() >= 3;
    match (large, new_energy) {
        (false, false) => PlateColour::Blue,
        (false, true) => PlateColour::GradientGreen,
        (true, false) => PlateColour::Yellow,
        (true, true) => PlateColour::YellowGreen,
    }
}

fn axle_count(vehicle_type: VehicleType) -> u8 {
    match vehicle_type.code() {
        11 | 12 => 2,
        13 => 3,
        14 => 4,
        15 => 5,
        16 => 6,
        _ => 2,
    }
}

/// Returns `now_ms` in China Standard Time (UTC+8, no daylight saving).
fn local_time(now_ms: u64) -> OffsetDateTime {
    let utc = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    utc.to_offset(UtcOffset::from_hms(8, 0, 0).expect("UTC+8 is a valid offset"))
}

/// Plate prefixes by two-digit administrative code.
const PROVINCE_PREFIXES: &[(u8, &str)] = &[
    (11, "京"),
    (12, "津"),
    (13, "冀"),
    (14, "晋"),
    (15, "蒙"),
    (21, "辽"),
    (22, "吉"),
    (23, "黑"),
    (31, "沪"),
    (32, "苏"),
    (33, "浙"),
    (34, "皖"),
    (35, "闽"),
    (36, "赣"),
    (37, "鲁"),
    (41, "豫"),
    (42, "鄂"),
    (43, "湘"),
    (44, "粤"),
    (45, "桂"),
    (46, "琼"),
    (50, "渝"),
    (51, "川"),
    (52, "贵"),
    (53, "云"),
    (54, "藏"),
    (61, "陕"),
    (62, "甘"),
    (63, "青"),
    (64, "宁"),
    (65, "新"),
];

/// Returns the plate prefix of a province, or `None` for an unknown code.
pub fn province_prefix(province: u8) -> Option<&'static str> {
    PROVINCE_PREFIXES
        .iter()
        .find(|(code, _)| *code == province)
        .map(|(_, prefix)| *prefix)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use tollway_topics::Message;

    use super::*;

    #[test]
    fn records_are_valid_and_encode() {
        let mut generator = Generator::new(
            "G001544001000201010".to_string(),
            44,
            StdRng::seed_from_u64(7),
        );
        for i in 0..2000 {
            let record = generator.next_record(1_796_358_912_345 + i * 250);
            let bytes = record.to_cbor().expect("a generated record encodes");
            let decoded = TollRecord::from_cbor(&bytes).expect("a generated record decodes");
            assert_eq!(decoded, record);
            assert_eq!(record.fee, record.pay_fee + record.discount_fee);
        }
    }

    #[test]
    fn plates_carry_home_prefix_mostly() {
        let mut generator = Generator::new(
            "G00154400100020101".to_string(),
            44,
            StdRng::seed_from_u64(1),
        );
        let home = (0..1000)
            .filter(|i| {
                generator
                    .next_record(1_796_358_912_345 + i)
                    .plate
                    .starts_with('粤')
            })
            .count();
        assert!(home > 800, "only {home} of 1000 plates start with 粤");
    }

    #[test]
    fn hour_batch_matches_the_time_crate() {
        // Every 7 hours and 13 minutes from 1970 to 2100, so every hour of
        // the day, leap days and year ends come round.
        let step_ms = (7 * 3600 + 13 * 60) * 1000;
        let mut ms = 0u64;
        while ms < 4_102_444_800_000 {
            let local = local_time(ms);
            let expected = u32::try_from(local.year()).unwrap() * 1_000_000
                + u32::from(u8::from(local.month())) * 10_000
                + u32::from(local.day()) * 100
                + u32::from(local.hour());
            assert_eq!(hour_batch_at(ms), expected, "at {ms} ms");
            ms += step_ms;
        }
    }
}
