//! Money as exact integers: amounts in micro-dollars, prices in pico-dollars.
//!
//! Floating point cannot add a million $0.000001 charges exactly, and the ledger
//! must never round a limit away. The wire carries USD as `f64` for readability;
//! it is converted once, at the edge, and validated there.
//!
//! Amounts ([`Usd`]) are whole micro-dollars, but prices ([`UnitPrice`]) are not:
//! an LLM token costs a fraction of a micro-dollar ($0.15 per million tokens is
//! $0.00000015 each), so a price kept in micro-dollars would charge it 0 or
//! round it to a multiple. A price is kept exactly, in pico-dollars per unit;
//! a cost is summed exactly in 128-bit integers and rounded once, at the total,
//! *up* to the next micro-dollar ([`Usd::from_picos_rounding_up`]): a budget may
//! be charged at most $0.000001 more than the exact cost, never less.

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};

/// An amount of US dollars in millionths. Never negative in the ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(i64);

/// Why a number is not a usable amount.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum MoneyError {
    #[error("{0} is not a finite number")]
    NotFinite(f64),
    #[error("{0} is negative; amounts are 0 or more")]
    Negative(f64),
    #[error("{0} is larger than the maximum of $1,000,000,000")]
    TooLarge(f64),
}

/// The largest amount accepted anywhere: $1e9 (so sums of many cannot overflow).
const MAX_MICROS: i64 = 1_000_000_000 * 1_000_000;

/// The largest balance the ledger files ($1e12): far above any honest spending
/// (a limit is at most $1e9), far below `i64::MAX` micro-dollars ($9.2e12), so
/// a flood of maximal charges is refused before a sum could overflow.
pub const MAX_BALANCE: Usd = Usd(1_000 * MAX_MICROS);

/// Pico-dollars in a micro-dollar.
const PICOS_PER_MICRO: u128 = 1_000_000;

/// Decimal places of a dollar a [`UnitPrice`] holds: pico-dollars.
const PRICE_DECIMALS: u32 = 12;

/// Significant digits an `f64` is guaranteed to carry from decimal text and
/// back (`f64::DIGITS`): any decimal with at most this many is read exactly.
const EXACT_DIGITS: usize = f64::DIGITS as usize;

// === impl Usd ===

impl Usd {
    pub const ZERO: Usd = Usd(0);

    /// Converts a dollar amount from the wire or the config, rounding to the
    /// nearest micro-dollar.
    ///
    /// # Errors
    /// NaN, infinities, negative amounts, and amounts above $1e9.
    pub fn from_dollars(dollars: f64) -> Result<Usd, MoneyError> {
        if !dollars.is_finite() {
            return Err(MoneyError::NotFinite(dollars));
        }
        if dollars < 0.0 {
            return Err(MoneyError::Negative(dollars));
        }
        let micros = (dollars * 1e6).round();
        if micros > MAX_MICROS as f64 {
            return Err(MoneyError::TooLarge(dollars));
        }
        Ok(Usd(micros as i64))
    }

    pub const fn from_micros(micros: i64) -> Usd {
        Usd(micros)
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    pub fn dollars(self) -> f64 {
        self.0 as f64 / 1e6
    }

    /// An exact sum of pico-dollars as an amount, rounded **up** to the next
    /// micro-dollar (a sub-micro-dollar remainder is charged, never dropped:
    /// a budget must not be under-charged), and capped at the largest amount
    /// ($1e9, which exhausts any budget, since a limit cannot be larger).
    pub fn from_picos_rounding_up(picos: u128) -> Usd {
        let micros = picos.div_ceil(PICOS_PER_MICRO);
        Usd(i64::try_from(micros).map_or(MAX_MICROS, |m| m.min(MAX_MICROS)))
    }

    /// The exact sum, or `None` when it would overflow: for sums that are
    /// written to the ledger, where saturating would file a wrong amount.
    pub fn checked_add(self, other: Usd) -> Option<Usd> {
        self.0.checked_add(other.0).map(Usd)
    }

    pub fn saturating_sub(self, other: Usd) -> Usd {
        Usd(self.0.saturating_sub(other.0).max(0))
    }
}

impl Add for Usd {
    type Output = Usd;
    fn add(self, other: Usd) -> Usd {
        Usd(self.0.saturating_add(other.0))
    }
}

impl AddAssign for Usd {
    fn add_assign(&mut self, other: Usd) {
        *self = *self + other;
    }
}

impl Sub for Usd {
    type Output = Usd;
    /// Saturates at zero: the ledger never holds a negative amount.
    fn sub(self, other: Usd) -> Usd {
        self.saturating_sub(other)
    }
}

impl SubAssign for Usd {
    fn sub_assign(&mut self, other: Usd) {
        *self = *self - other;
    }
}

impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cents_exact = self.0 % 10_000 == 0;
        if cents_exact {
            write!(f, "${:.2}", self.dollars())
        } else {
            write!(f, "${:.6}", self.dollars())
        }
    }
}

/// A price per unit (a request, a token, …) in pico-dollars ($10⁻¹²), exact.
///
/// Read from the config's decimal with [`UnitPrice::per_unit`] (12 decimal
/// places of a dollar) or [`UnitPrice::per_million`] (a price per million units,
/// 6 decimal places), and refused, not rounded, when the decimal needs more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitPrice(u128);

/// Why a number is not a usable price.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PriceError {
    #[error(transparent)]
    Money(#[from] MoneyError),
    #[error(
        "{text} has more than {places} decimal places, which a price {per} cannot \
         hold exactly (the smallest step is ${step}); round it to {places} places"
    )]
    TooPrecise {
        text: String,
        places: u32,
        per: &'static str,
        step: &'static str,
    },
    #[error(
        "{text} has more than 15 significant digits, more than a TOML number \
         carries exactly; round it to 15"
    )]
    TooManyDigits { text: String },
}

// === impl UnitPrice ===

impl UnitPrice {
    pub const ZERO: UnitPrice = UnitPrice(0);

    /// A price in dollars per unit, e.g. `0.0000025` ($2.50 per million tokens).
    ///
    /// # Errors
    /// NaN, infinities, negative prices, prices above $1e9, and prices with more
    /// than 12 decimal places or 15 significant digits (see [`exact_decimal`]).
    pub fn per_unit(dollars: f64) -> Result<UnitPrice, PriceError> {
        exact_decimal(dollars, PRICE_DECIMALS)
            .map(UnitPrice)
            .map_err(|e| e.place("per unit", "0.000000000001"))
    }

    /// A price in dollars per million units, e.g. `2.5` ($0.0000025 per unit):
    /// how providers publish token prices.
    ///
    /// # Errors
    /// As [`UnitPrice::per_unit`], with at most 6 decimal places.
    pub fn per_million(dollars: f64) -> Result<UnitPrice, PriceError> {
        exact_decimal(dollars, PRICE_DECIMALS - 6)
            .map(UnitPrice)
            .map_err(|e| e.place("per million units", "0.000001"))
    }

    /// An exact price from pico-dollars per unit (tests, and callers that
    /// already hold one).
    pub const fn from_picos(picos: u128) -> UnitPrice {
        UnitPrice(picos)
    }

    pub const fn picos(self) -> u128 {
        self.0
    }

    /// `self × units` in pico-dollars, exact: at most $1e9 × 10¹² × 2³² ≈ 4.3·10³⁰,
    /// far below `u128::MAX` (3.4·10³⁸), so a sum of a few such terms cannot
    /// overflow either.
    pub fn times(self, units: u32) -> u128 {
        self.0 * u128::from(units)
    }
}

impl PriceError {
    fn place(self, per: &'static str, step: &'static str) -> PriceError {
        match self {
            PriceError::TooPrecise { text, places, .. } => PriceError::TooPrecise {
                text,
                places,
                per,
                step,
            },
            other => other,
        }
    }
}

impl fmt::Display for UnitPrice {
    /// Dollars with as many decimals as the price has (`$0.00000015`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scale = 10u128.pow(PRICE_DECIMALS);
        let (whole, frac) = (self.0 / scale, self.0 % scale);
        if frac == 0 {
            return write!(f, "${whole}");
        }
        let digits = format!("{frac:012}");
        write!(f, "${whole}.{}", digits.trim_end_matches('0'))
    }
}

/// `dollars` × 10^`places` as an integer, exactly, or why not.
///
/// TOML numbers reach us as `f64`, which cannot hold most decimals
/// (0.0000025 is 0.00000249999999999999989…). What the operator wrote is
/// recovered from the `f64`'s shortest round-trip text (Rust's `Display`): for
/// a decimal of at most 15 significant digits that text is exactly the
/// decimal written (`f64::DIGITS`), so the conversion is exact. Text with more
/// digits may not be what was written, and text with more than `places`
/// decimals cannot be held: both are refused rather than rounded.
fn exact_decimal(dollars: f64, places: u32) -> Result<u128, PriceError> {
    if !dollars.is_finite() {
        return Err(MoneyError::NotFinite(dollars).into());
    }
    if dollars < 0.0 {
        return Err(MoneyError::Negative(dollars).into());
    }
    if dollars > 1e9 {
        return Err(MoneyError::TooLarge(dollars).into());
    }
    if dollars == 0.0 {
        return Ok(0); // also -0.0, which `Display` writes as "-0"
    }
    // `Display` of an f64 never uses an exponent: "0.00000015", "1000000000".
    let text = format!("{dollars}");
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    let frac = frac.trim_end_matches('0');
    let significant = format!("{whole}{frac}");
    if significant.trim_start_matches('0').len() > EXACT_DIGITS {
        return Err(PriceError::TooManyDigits { text });
    }
    if frac.len() > places as usize {
        return Err(PriceError::TooPrecise {
            text,
            places,
            per: "",
            step: "",
        });
    }
    let digit_value = |s: &str| -> u128 {
        s.bytes()
            .fold(0, |acc, b| acc * 10 + u128::from(b.wrapping_sub(b'0')))
    };
    let frac_len = u32::try_from(frac.len()).expect("at most `places` digits, checked above");
    Ok(digit_value(whole) * 10u128.pow(places) + digit_value(frac) * 10u128.pow(places - frac_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(Usd::from_dollars(100.0).unwrap().micros(), 100_000_000);
        assert_eq!(Usd::from_dollars(0.000_001).unwrap().micros(), 1);
        assert_eq!(
            Usd::from_dollars(0.1).unwrap() + Usd::from_dollars(0.2).unwrap(),
            Usd::from_dollars(0.3).unwrap()
        );
        assert!(Usd::from_dollars(f64::NAN).is_err());
        assert!(Usd::from_dollars(-1.0).is_err());
        assert!(Usd::from_dollars(2e9).is_err());
        assert_eq!(Usd::from_micros(5) - Usd::from_micros(9), Usd::ZERO);
        assert_eq!(Usd::from_dollars(12.5).unwrap().to_string(), "$12.50");
        assert_eq!(Usd::from_micros(1).to_string(), "$0.000001");
    }

    #[test]
    fn a_million_micro_charges_add_up_exactly() {
        let mut total = Usd::ZERO;
        for _ in 0..1_000_000 {
            total += Usd::from_dollars(0.000_001).unwrap();
        }
        assert_eq!(total, Usd::from_dollars(1.0).unwrap());
    }

    fn picos(text: f64) -> u128 {
        UnitPrice::per_unit(text).unwrap().picos()
    }

    #[test]
    fn prices_are_read_exactly_from_their_decimal() {
        assert_eq!(picos(0.0000025), 2_500_000);
        assert_eq!(picos(0.00000015), 150_000);
        assert_eq!(picos(0.000000000001), 1);
        assert_eq!(picos(0.0), 0);
        assert_eq!(picos(-0.0), 0);
        assert_eq!(picos(1.0), 1_000_000_000_000);
        assert_eq!(picos(1e9), 1_000_000_000 * 1_000_000_000_000);
        assert_eq!(picos(123.456), 123_456_000_000_000);
        let per_million = |d: f64| UnitPrice::per_million(d).unwrap().picos();
        assert_eq!(per_million(0.15), picos(0.00000015));
        assert_eq!(per_million(2.5), picos(0.0000025));
        assert_eq!(per_million(0.0375), 37_500);
        assert_eq!(per_million(0.000001), 1);
        assert_eq!(UnitPrice::from_picos(150_000).to_string(), "$0.00000015");
        assert_eq!(UnitPrice::from_picos(2_000_000_000_000).to_string(), "$2");
    }

    #[test]
    fn prices_that_cannot_be_held_exactly_are_refused_with_a_reason() {
        let err = |r: Result<UnitPrice, PriceError>| r.unwrap_err().to_string();
        assert_eq!(
            err(UnitPrice::per_unit(0.0000000000001)),
            "0.0000000000001 has more than 12 decimal places, which a price per unit \
             cannot hold exactly (the smallest step is $0.000000000001); round it to 12 places"
        );
        assert!(err(UnitPrice::per_million(0.0000001))
            .contains("more than 6 decimal places, which a price per million units"));
        assert!(err(UnitPrice::per_unit(0.1234567890123456)).contains("15 significant digits"));
        assert!(err(UnitPrice::per_unit(-0.1)).contains("negative"));
        assert!(err(UnitPrice::per_unit(f64::NAN)).contains("not a finite number"));
        assert!(err(UnitPrice::per_unit(1.5e9)).contains("maximum"));
    }

    #[test]
    fn totals_round_once_and_up() {
        assert_eq!(Usd::from_picos_rounding_up(0), Usd::ZERO);
        assert_eq!(Usd::from_picos_rounding_up(1), Usd::from_micros(1));
        assert_eq!(Usd::from_picos_rounding_up(1_000_000), Usd::from_micros(1));
        assert_eq!(Usd::from_picos_rounding_up(1_000_001), Usd::from_micros(2));
        assert_eq!(
            Usd::from_picos_rounding_up(u128::MAX),
            Usd::from_micros(MAX_MICROS)
        );
    }

    proptest::proptest! {
        /// Whatever decimal an operator writes (up to 12 places, within the
        /// maximum) is held exactly, through the `f64` TOML gives us.
        #[test]
        fn any_price_with_at_most_15_digits_is_read_exactly(
            picos in 0u64..=999_999_999_999_999,
            shift in 0u32..=6,
        ) {
            // `picos` has ≤ 15 digits; shifting it left keeps them significant
            // and moves the value up to just below the $1e9 maximum.
            let exact = u128::from(picos) * 10u128.pow(shift);
            let text = format!(
                "{}.{:012}",
                exact / 10u128.pow(PRICE_DECIMALS),
                exact % 10u128.pow(PRICE_DECIMALS)
            );
            let dollars: f64 = text.parse().unwrap();
            proptest::prop_assert_eq!(UnitPrice::per_unit(dollars).unwrap().picos(), exact);
        }
    }
}
