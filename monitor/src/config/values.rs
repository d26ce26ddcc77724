//! Values that both the command line and the config file take, each with one parser and one
//! error wording: durations (`500ms`, `5s`, `2m`, `1h`), positive numbers, ratios and CPU
//! budgets. The wrapper types deserialize from TOML with the same checks that the flags get.
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written like `500ms`, `5s`, `10m`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // "0s" is a valid `for`/`clear_for`; spans that must be positive are checked in `validate`.
        parse_duration_or_zero(&s).map(Dur).map_err(serde::de::Error::custom)
    }
}

/// A number greater than zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Positive(pub f64);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if v > 0.0 && v.is_finite() {
            Ok(Positive(v))
        } else {
            Err(serde::de::Error::custom(format!("must be a positive number, got {v}")))
        }
    }
}

/// A share between 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio(pub f64);

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if (0.0..=1.0).contains(&v) {
            Ok(Ratio(v))
        } else {
            Err(serde::de::Error::custom(format!("must be between 0 and 1, got {v}")))
        }
    }
}

pub fn parse_positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

pub fn parse_budget(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("{text:?} is not a share of one core: give a number above 0 and at most 1, e.g. 0.01")),
    }
}

pub fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{text:?} is not a ratio between 0 and 1")),
    }
}

/// Durations like `500ms`, `5s`, `2m`, `1h`; zero is allowed (a `for` of 0s means "at once").
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 5s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration {text:?}: unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {text:?}: too large"))
}

/// As `parse_duration_or_zero`, but the duration must be longer than zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match parse_duration_or_zero(text)? {
        d if d.is_zero() => Err(format!("invalid duration {text:?}: must be positive")),
        d => Ok(d),
    }
}

/// A positive duration flag as a [`Dur`].
pub fn positive_dur(text: &str) -> Result<Dur, String> {
    parse_duration(text).map(Dur)
}

/// A positive number flag as a [`Positive`].
pub fn positive(text: &str) -> Result<Positive, String> {
    parse_positive(text).map(Positive)
}

/// A ratio flag as a [`Ratio`].
pub fn ratio(text: &str) -> Result<Ratio, String> {
    parse_ratio(text).map(Ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
    }
}
