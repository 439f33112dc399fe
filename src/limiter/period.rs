//! What `current_limit` tells Envoy about a limit whose period is several units
//! (`unit_multiplier`).
//!
//! Envoy's `RateLimit` has a `requests_per_unit` and a `unit`, no period length, and its
//! `x-ratelimit-limit` header writes the unit as the window (`200, 200;w=60`). Reporting the
//! configured count with the configured unit would overstate the rate `unit_multiplier` times
//! (1000 per five minutes is not 1000 per minute). So the same rate is reported in the shortest
//! unit where it is a whole number: 1000 per 5 minutes is 200 per minute, 7 per 5 minutes is 84
//! per hour. A rate that is whole in no unit is reported per year, rounded down (at least 1).
//! `x-ratelimit-remaining` and `x-ratelimit-reset` come from the bucket itself and need no
//! mapping.

use crate::unit::Unit;

/// `(requests_per_unit, unit)` for Envoy, for `requests_per_unit` every `multiplier` units.
pub(crate) fn reported(requests_per_unit: u32, unit: Unit, multiplier: u16) -> (u32, Unit) {
    if multiplier <= 1 {
        return (requests_per_unit, unit);
    }
    let period = u128::from(unit.seconds()) * u128::from(multiplier);
    let per = |u: Unit| u128::from(requests_per_unit) * u128::from(u.seconds());
    let whole = Unit::ALL.into_iter().find_map(|u| {
        let n = per(u);
        (n % period == 0)
            .then(|| u32::try_from(n / period).ok())
            .flatten()
            .filter(|&r| r >= 1)
            .map(|r| (r, u))
    });
    whole.unwrap_or_else(|| {
        let per_year = (per(Unit::Year) / period).clamp(1, u128::from(u32::MAX));
        (per_year as u32, Unit::Year)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_unit_is_reported_as_configured() {
        assert_eq!(reported(1000, Unit::Minute, 1), (1000, Unit::Minute));
    }

    #[test]
    fn a_multiple_of_a_unit_is_the_same_rate_in_the_shortest_unit_where_it_is_whole() {
        assert_eq!(reported(1000, Unit::Minute, 5), (200, Unit::Minute));
        assert_eq!(reported(600, Unit::Minute, 5), (2, Unit::Second));
        assert_eq!(reported(7, Unit::Minute, 5), (84, Unit::Hour));
        assert_eq!(reported(1, Unit::Day, 7), (1, Unit::Week));
    }

    #[test]
    fn a_rate_whole_in_no_unit_is_per_year_rounded_down_and_never_zero() {
        // 1 per 11 minutes: 47,781.8 a year.
        assert_eq!(reported(1, Unit::Minute, 11), (47_781, Unit::Year));
        assert_eq!(reported(1, Unit::Year, 7), (1, Unit::Year));
    }
}
