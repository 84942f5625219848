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
        (ResourceType::AdjustmentBasePairedVideo, "adjustment_base_paired_video"),
        (ResourceType::Sidecar, "sidecar"),
    ];

    /// The stable wire and storage name (`snake_case`, as in SPEC.md).
    pub fn as_str(&self) -> &str {
        match self {
            ResourceType::Other(name) => name,
            known => {
                Self::NAMES
                    .iter()
                    .find(|(t, _)| t == known)
                    .map(|(_, n)| *n)
                    .unwrap_or("other")
            }
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
