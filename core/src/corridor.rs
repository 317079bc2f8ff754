//! Corridor identifiers: directional trade routes such as `UAE-SA` or `US-EG`.

use crate::CoreError;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

/// A validated corridor id: two upper-case region codes of 2 or 3 ASCII letters joined by
/// `-` (`UAE-SA`, `US-EG`, `UK-NG`). Lower-case input is normalised to upper case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CorridorId(String);

impl CorridorId {
    /// Parses and normalises a corridor id.
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let upper = s.trim().to_ascii_uppercase();
        let valid_part = |p: &str| (2..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_uppercase());
        match upper.split_once('-') {
            Some((from, to)) if valid_part(from) && valid_part(to) => Ok(Self(upper)),
            _ => Err(CoreError::InvalidCorridor(s.to_string())),
        }
    }

    /// The id as a string, e.g. `UAE-SA`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CorridorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for CorridorId {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for CorridorId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        assert_eq!(CorridorId::parse("uae-sa").unwrap().as_str(), "UAE-SA");
        assert_eq!(CorridorId::parse("US-EG").unwrap().as_str(), "US-EG");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "UAE", "UAE-", "-SA", "UAESA-X", "U1-SA", "UAE-SA-EG", "ABCD-SA"] {
            assert!(CorridorId::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
