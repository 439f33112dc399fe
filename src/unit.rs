//! Time units of a rate limit, as Envoy's `RateLimitResponse.RateLimit.Unit` and the
//! envoyproxy/ratelimit YAML name them.
//!
//! Month and year are fixed lengths (30 and 365 days), as in the reference service, so a
//! bucket's refill rate never depends on the calendar.

use std::fmt;
use std::str::FromStr;

const SECOND_NS: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// Length of the unit in seconds.
    pub const fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    /// Length of the unit in nanoseconds (a year is 3.15e16 ns: fits u64 with room).
    pub const fn nanos(self) -> u64 {
        self.seconds() * SECOND_NS
    }

    /// The value of the unit in Envoy's `RateLimitResponse.RateLimit.Unit` enum.
    pub const fn to_proto(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
            Unit::Week => 7,
        }
    }

    /// Envoy's enum value to a unit; `None` for UNKNOWN (0) and values this build does not know.
    pub const fn from_proto(value: i32) -> Option<Unit> {
        Some(match value {
            1 => Unit::Second,
            2 => Unit::Minute,
            3 => Unit::Hour,
            4 => Unit::Day,
            5 => Unit::Month,
            6 => Unit::Year,
            7 => Unit::Week,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid rate limit unit '{0}' (expected one of second, minute, hour, day, week, month, year)"
)]
pub struct InvalidUnit(pub String);

impl FromStr for Unit {
    type Err = InvalidUnit;

    /// Case-insensitive, as the reference service accepts `SECOND` and `second` alike.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Unit::ALL
            .into_iter()
            .find(|u| u.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| InvalidUnit(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_any_case() {
        assert_eq!("SECOND".parse::<Unit>(), Ok(Unit::Second));
        assert_eq!("Week".parse::<Unit>(), Ok(Unit::Week));
        assert_eq!("year".parse::<Unit>(), Ok(Unit::Year));
    }

    #[test]
    fn rejects_unknown_unit_with_its_name() {
        let err = "fortnight".parse::<Unit>().unwrap_err();
        assert!(err.to_string().contains("'fortnight'"), "{err}");
    }

    #[test]
    fn proto_values_round_trip() {
        for u in Unit::ALL {
            assert_eq!(Unit::from_proto(u.to_proto()), Some(u));
        }
        assert_eq!(Unit::from_proto(0), None);
        assert_eq!(Unit::from_proto(99), None);
    }
}
