//! Resource types: what role one file plays in an asset (SPEC.md, "Words").

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The role of one file within an asset. Mirrors `PHAssetResourceType`, plus Ferry's `sidecar`.
///
/// `Other` keeps a type Ferry does not know (read from a newer store or a peer) instead of
/// dropping it: unknown types are backed up, never lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum ResourceType {
    Photo,
    Video,
    Audio,
    AlternatePhoto,
    FullSizePhoto,
    FullSizeVideo,
    AdjustmentData,
    PairedVideo,
    FullSizePairedVideo,
    AdjustmentBasePhoto,
    AdjustmentBaseVideo,
    AdjustmentBasePairedVideo,
    Sidecar,
    Other(String),
}

impl ResourceType {
    const NAMES: [(ResourceType, &'static str); 13] = [
        (ResourceType::Photo, "photo"),
        (ResourceType::Video, "video"),
        (ResourceType::Audio, "audio"),
        (ResourceType::AlternatePhoto, "alternate_photo"),
        (ResourceType::FullSizePhoto, "full_size_photo"),
        (ResourceType::FullSizeVideo, "full_size_video"),
        (ResourceType::AdjustmentData, "adjustment_data"),
        (ResourceType::PairedVideo, "paired_video"),
        (ResourceType::FullSizePairedVideo, "full_size_paired_video"),
        (ResourceType::AdjustmentBasePhoto, "adjustment_base_photo"),
        (ResourceType::AdjustmentBaseVideo, "adjustment_base_video"),
        (
            ResourceType::AdjustmentBasePairedVideo,
            "adjustment_base_paired_video",
        ),
        (ResourceType::Sidecar, "sidecar"),
    ];

    /// The stable wire and storage name (`snake_case`, as in SPEC.md).
    pub fn as_str(&self) -> &str {
        match self {
            ResourceType::Other(name) => name,
            known => Self::NAMES
                .iter()
                .find(|(t, _)| t == known)
                .map(|(_, n)| *n)
                .unwrap_or("other"),
        }
    }

    /// Parses a name; an unknown one becomes `Other`, never an error.
    pub fn from_name(name: &str) -> ResourceType {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(t, _)| t.clone())
            .unwrap_or_else(|| ResourceType::Other(name.to_owned()))
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResourceType {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ResourceType::from_name(s))
    }
}

impl From<ResourceType> for String {
    fn from(t: ResourceType) -> String {
        t.as_str().to_owned()
    }
}

impl From<String> for ResourceType {
    fn from(s: String) -> ResourceType {
        ResourceType::from_name(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_kept() {
        for (t, n) in ResourceType::NAMES.iter() {
            assert_eq!(t.as_str(), *n);
            assert_eq!(&ResourceType::from_name(n), t);
        }
        let other = ResourceType::from_name("spatial_video");
        assert_eq!(other, ResourceType::Other("spatial_video".into()));
        assert_eq!(other.as_str(), "spatial_video");
    }
}

/// What Ferry read from a resource's own bytes (EXIF, QuickTime, image headers).
///
/// Every field is optional: a file with no or broken metadata is still a resource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceMetadata {
    /// Wall-clock capture time where it was taken, `YYYY-MM-DDTHH:MM:SS` (no zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_time: Option<String>,
    /// The capture place's offset from UTC, when the file records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset_s: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub make: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gps: Option<Gps>,
    /// Apple's Live Photo pairing key (MakerNote 0x0011 / QuickTime content identifier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_identifier: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gps {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub altitude_m: Option<f64>,
}

impl ResourceMetadata {
    /// The capture time as RFC 3339 when the offset is known (`2024-06-12T10:15:00+02:00`),
    /// else the bare wall-clock time.
    pub fn capture_time_display(&self) -> Option<String> {
        let local = self.capture_time.as_ref()?;
        Some(match self.utc_offset_s {
            Some(off) => {
                let sign = if off < 0 { '-' } else { '+' };
                let a = off.unsigned_abs();
                format!("{local}{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
            }
            None => local.clone(),
        })
    }

    /// Seconds since the epoch of the capture: exact when the offset is known, else the wall
    /// clock read as if it were UTC (good enough to compare two files from one camera).
    pub fn capture_epoch_s(&self) -> Option<i64> {
        let local = parse_wall_clock(self.capture_time.as_deref()?)?;
        Some(local - i64::from(self.utc_offset_s.unwrap_or(0)))
    }
}

/// `YYYY-MM-DDTHH:MM:SS` to seconds since 1970 as if UTC; `None` if malformed.
pub fn parse_wall_clock(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod metadata_tests {
    use super::*;

    #[test]
    fn wall_clock_parses_and_rejects() {
        assert_eq!(parse_wall_clock("1970-01-01T00:00:00"), Some(0));
        assert_eq!(parse_wall_clock("2000-03-01T00:00:01"), Some(951_868_801));
        assert_eq!(parse_wall_clock("2024-13-01T00:00:00"), None);
        assert_eq!(parse_wall_clock("garbage"), None);
        let m = ResourceMetadata {
            capture_time: Some("2024-06-12T10:15:00".into()),
            utc_offset_s: Some(7200),
            ..Default::default()
        };
        assert_eq!(
            m.capture_time_display().as_deref(),
            Some("2024-06-12T10:15:00+02:00")
        );
        assert_eq!(m.capture_epoch_s(), parse_wall_clock("2024-06-12T08:15:00"));
    }
}
