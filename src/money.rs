//! Money as an exact integer: micro-dollars.
//!
//! Floating point cannot add a million $0.000001 charges exactly, and the ledger
//! must never round a limit away. The wire carries USD as `f64` for readability;
//! it is converted once, at the edge, and validated there.

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

    /// `self × n`, saturating (prices × units).
    pub fn times(self, n: u64) -> Usd {
        Usd(self.0.saturating_mul(i64::try_from(n).unwrap_or(i64::MAX)))
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
}
