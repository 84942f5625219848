//! Grouping one folder's files into assets with typed resources. Pure: names and metadata in,
//! groups out, so every rule is a table test.
//!
//! The rules (SPEC.md's resource types, Apple's and Google's naming conventions):
//! - files group by base name within one folder, case-insensitively;
//! - a RAW beside a rendered still of the same name is its `alternate_photo`;
//! - a still + a video are a Live Photo (`photo` + `paired_video`) when their Apple content
//!   identifiers match, or, lacking one, when their capture times are within
//!   [`LIVE_PAIR_MAX_SKEW_S`]; a video whose identifier matches a still of another name in the
//!   same folder joins that still;
//! - `IMG_E1234.*` (Apple) and `*-edited.*` / `*_edited.*` (Google) beside their original are
//!   the edited renditions (`full_size_photo`, `full_size_video`, `full_size_paired_video`);
//! - `.AAE` (also `IMG_O1234.AAE`) is `adjustment_data`, `.xmp` (`X.xmp` or `X.JPG.xmp`) a
//!   `sidecar`;
//! - anything else stands alone: a video is `video`, audio `audio`, a lone sidecar its own asset
//!   (kept, never dropped).

use crate::classify::FileKind;
use ferry_core::ResourceType;
use std::collections::BTreeMap;

/// Live Photo halves are taken within a second or two of each other; allow some clock slop.
pub const LIVE_PAIR_MAX_SKEW_S: i64 = 3;

/// One file of the folder, as grouping sees it.
#[derive(Debug, Clone)]
pub struct GroupInput {
    pub name: String,
    pub kind: FileKind,
    pub content_identifier: Option<String>,
    pub capture_epoch_s: Option<i64>,
}

/// One asset's resources, as indexes into the input slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub members: Vec<(usize, ResourceType)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Original,
    Edited,
    /// `IMG_O1234.AAE`: the original's adjustments.
    OriginalAdjustment,
}

/// Lower-cased name without extension(s): `IMG_0701.JPG.xmp` → `img_0701`.
fn stem(name: &str, kind: FileKind) -> String {
    let lower = name.to_lowercase();
    let mut s = lower.as_str();
    if let Some((head, _)) = s.rsplit_once('.') {
        s = head;
    }
    if kind == FileKind::Sidecar
        && let Some((head, ext)) = s.rsplit_once('.')
        && crate::classify::kind_from_name(&format!("x.{ext}")).is_some()
    {
        s = head;
    }
    s.to_owned()
}

/// Splits an edit marker off a stem: (`img_e0400`) → (`img_0400`, Edited).
fn split_marker(stem: &str) -> Option<(String, Marker)> {
    for suffix in ["-edited", "_edited", " (edited)", "-bearbeitet", "-modifié"] {
        if let Some(base) = stem.strip_suffix(suffix)
            && !base.is_empty()
        {
            return Some((base.to_owned(), Marker::Edited));
        }
    }
    // Apple: `<prefix>_E<digits>` / `<prefix>_O<digits>`.
    let (prefix, rest) = stem.rsplit_once('_')?;
    let mut chars = rest.chars();
    let marker = match chars.next()? {
        'e' => Marker::Edited,
        'o' => Marker::OriginalAdjustment,
        _ => return None,
    };
    let digits = chars.as_str();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((format!("{prefix}_{digits}"), marker))
}

struct Entry {
    idx: usize,
    kind: FileKind,
    marker: Marker,
}

/// Groups one folder's files. Every input index appears in exactly one group.
pub fn group_folder(files: &[GroupInput]) -> Vec<Group> {
    let stems: Vec<String> = files.iter().map(|f| stem(&f.name, f.kind)).collect();
    let plain: std::collections::HashSet<&str> = stems.iter().map(String::as_str).collect();

    // Base name → files, with edit markers resolved only when the original's name exists.
    let mut by_base: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for (idx, f) in files.iter().enumerate() {
        let (base, marker) = match split_marker(&stems[idx]) {
            Some((base, m)) if plain.contains(base.as_str()) => (base, m),
            _ => (stems[idx].clone(), Marker::Original),
        };
        by_base.entry(base).or_default().push(Entry {
            idx,
            kind: f.kind,
            marker,
        });
    }

    let mut groups: Vec<Group> = Vec::new();
    let mut loose_videos: Vec<usize> = Vec::new();
    for (_, mut entries) in by_base {
        // Deterministic choice of primaries: preferred formats first, then by name.
        entries.sort_by_key(|e| (photo_rank(&files[e.idx].name), files[e.idx].name.clone()));
        groups.extend(group_base(files, &entries, &mut loose_videos));
    }

    // A video standing alone whose content identifier matches an unpaired still of another
    // name in this folder is that still's motion half.
    for v in loose_videos {
        let Some(cid) = files[v].content_identifier.as_deref() else {
            groups.push(Group {
                members: vec![(v, ResourceType::Video)],
            });
            continue;
        };
        let target = groups.iter_mut().find(|g| {
            let photo = g.members.iter().find(|(_, t)| *t == ResourceType::Photo);
            let paired = g
                .members
                .iter()
                .any(|(_, t)| *t == ResourceType::PairedVideo);
            !paired
                && photo.is_some_and(|(i, _)| files[*i].content_identifier.as_deref() == Some(cid))
        });
        match target {
            Some(g) => g.members.push((v, ResourceType::PairedVideo)),
            None => groups.push(Group {
                members: vec![(v, ResourceType::Video)],
            }),
        }
    }
    for g in &mut groups {
        g.members.sort_by_key(|(i, _)| *i);
    }
    groups.sort_by_key(|g| g.members[0].0);
    groups
}

fn photo_rank(name: &str) -> u8 {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "heic" | "heif" => 0,
        "jpg" | "jpeg" => 1,
        _ => 2,
    }
}

fn live_pair(photo: &GroupInput, video: &GroupInput) -> bool {
    match (&photo.content_identifier, &video.content_identifier) {
        (Some(a), Some(b)) => a == b,
        _ => match (photo.capture_epoch_s, video.capture_epoch_s) {
            (Some(a), Some(b)) => (a - b).abs() <= LIVE_PAIR_MAX_SKEW_S,
            // Same base name and nothing to contradict it: cameras number stills and their
            // motion clips together.
            _ => true,
        },
    }
}

/// Groups the files of one base name. Videos that do not belong are pushed to `loose_videos`.
fn group_base(
    files: &[GroupInput],
    entries: &[Entry],
    loose_videos: &mut Vec<usize>,
) -> Vec<Group> {
    let pick = |kind: FileKind, marker: Marker| -> Vec<usize> {
        entries
            .iter()
            .filter(|e| e.kind == kind && e.marker == marker)
            .map(|e| e.idx)
            .collect()
    };
    let stills = pick(FileKind::Photo, Marker::Original);
    let raws = pick(FileKind::Raw, Marker::Original);
    let videos = pick(FileKind::Video, Marker::Original);
    let edited_stills: Vec<usize> = entries
        .iter()
        .filter(|e| e.marker == Marker::Edited && matches!(e.kind, FileKind::Photo | FileKind::Raw))
        .map(|e| e.idx)
        .collect();
    let edited_videos = pick(FileKind::Video, Marker::Edited);

    let mut main: Vec<(usize, ResourceType)> = Vec::new();
    let mut extra: Vec<Group> = Vec::new();

    // The primary still: a rendered one if present, else the RAW.
    let primary = stills.first().or(raws.first()).copied();
    if let Some(p) = primary {
        main.push((p, ResourceType::Photo));
    }
    for &i in stills.iter().chain(raws.iter()) {
        if Some(i) != primary {
            main.push((i, ResourceType::AlternatePhoto));
        }
    }

    let mut paired = false;
    for &v in &videos {
        let joins_photo =
            primary.is_some() && !paired && live_pair(&files[primary.expect("checked")], &files[v]);
        if joins_photo {
            main.push((v, ResourceType::PairedVideo));
            paired = true;
        } else if primary.is_none()
            && !main.iter().any(|(_, t)| *t == ResourceType::Video)
            // A lone video with an identifier may be the motion half of a still of another
            // name: the folder-wide pass decides.
            && !(entries.len() == 1 && files[v].content_identifier.is_some())
        {
            main.push((v, ResourceType::Video));
        } else {
            loose_videos.push(v);
        }
    }
    for &i in &edited_stills {
        main.push((i, ResourceType::FullSizePhoto));
    }
    for &i in &edited_videos {
        let t = if paired || (primary.is_some() && videos.is_empty()) {
            ResourceType::FullSizePairedVideo
        } else {
            ResourceType::FullSizeVideo
        };
        main.push((i, t));
    }
    for e in entries {
        match (e.kind, e.marker) {
            (FileKind::Adjustment, _) => main.push((e.idx, ResourceType::AdjustmentData)),
            (FileKind::Sidecar, _) => main.push((e.idx, ResourceType::Sidecar)),
            (FileKind::Audio, _) if !main.is_empty() => main.push((e.idx, ResourceType::Audio)),
            (FileKind::Audio, _) => extra.push(Group {
                members: vec![(e.idx, ResourceType::Audio)],
            }),
            // Edited markers on other kinds (an `_O` photo) were not matched above: keep them.
            (FileKind::Photo | FileKind::Raw, Marker::OriginalAdjustment) => extra.push(Group {
                members: vec![(e.idx, ResourceType::Photo)],
            }),
            (FileKind::Video, Marker::OriginalAdjustment) => loose_videos.push(e.idx),
            _ => {}
        }
    }
    if main.is_empty() {
        return extra;
    }
    // A group of only sidecars/adjustments (the media is gone or elsewhere) is still kept.
    let mut out = vec![Group { members: main }];
    out.extend(extra);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::kind_from_name;
    use ResourceType::*;

    fn input(name: &str) -> GroupInput {
        GroupInput {
            name: name.into(),
            kind: kind_from_name(name).expect("media name"),
            content_identifier: None,
            capture_epoch_s: None,
        }
    }

    fn with(name: &str, cid: Option<&str>, t: Option<i64>) -> GroupInput {
        GroupInput {
            content_identifier: cid.map(Into::into),
            capture_epoch_s: t,
            ..input(name)
        }
    }

    /// Renders groups as `name:type` lists for readable assertions.
    fn render(files: &[GroupInput]) -> Vec<Vec<String>> {
        group_folder(files)
            .into_iter()
            .map(|g| {
                g.members
                    .into_iter()
                    .map(|(i, t)| format!("{}:{}", files[i].name, t))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn raw_plus_jpeg_and_lone_raw() {
        let files = [
            input("IMG_0100.JPG"),
            input("IMG_0100.DNG"),
            input("DSC_2.NEF"),
        ];
        assert_eq!(
            render(&files),
            vec![
                vec!["IMG_0100.JPG:photo", "IMG_0100.DNG:alternate_photo"],
                vec!["DSC_2.NEF:photo"],
            ]
        );
        let _ = (Photo, AlternatePhoto);
    }

    #[test]
    fn live_photo_by_identifier_fallback_and_mismatch() {
        let files = [
            with("IMG_0200.HEIC", Some("A"), Some(100)),
            with("IMG_0200.MOV", Some("A"), Some(500)),
            with("IMG_0300.JPG", None, Some(100)),
            with("IMG_0300.MOV", None, Some(101)),
            with("IMG_0310.HEIC", Some("X"), Some(100)),
            with("IMG_0310.MOV", Some("Y"), Some(100)),
            with("IMG_0320.JPG", None, Some(100)),
            with("IMG_0320.MOV", None, Some(900)),
        ];
        assert_eq!(
            render(&files),
            vec![
                vec!["IMG_0200.HEIC:photo", "IMG_0200.MOV:paired_video"],
                vec!["IMG_0300.JPG:photo", "IMG_0300.MOV:paired_video"],
                vec!["IMG_0310.HEIC:photo"],
                vec!["IMG_0310.MOV:video"],
                vec!["IMG_0320.JPG:photo"],
                vec!["IMG_0320.MOV:video"],
            ]
        );
    }

    #[test]
    fn live_photo_by_identifier_across_names() {
        let files = [
            with("IMG_0201.JPG", Some("C"), None),
            with("IMG_0201_1.MOV", Some("C"), None),
            with("other.mov", Some("D"), None),
        ];
        assert_eq!(
            render(&files),
            vec![
                vec!["IMG_0201.JPG:photo", "IMG_0201_1.MOV:paired_video"],
                vec!["other.mov:video"],
            ]
        );
    }

    #[test]
    fn apple_edits_of_a_live_photo() {
        let files = [
            with("IMG_0500.HEIC", Some("L"), None),
            with("IMG_0500.MOV", Some("L"), None),
            input("IMG_E0500.HEIC"),
            input("IMG_E0500.MOV"),
            input("IMG_0500.AAE"),
            input("IMG_O0500.AAE"),
        ];
        assert_eq!(
            render(&files),
            vec![vec![
                "IMG_0500.HEIC:photo",
                "IMG_0500.MOV:paired_video",
                "IMG_E0500.HEIC:full_size_photo",
                "IMG_E0500.MOV:full_size_paired_video",
                "IMG_0500.AAE:adjustment_data",
                "IMG_O0500.AAE:adjustment_data",
            ]]
        );
    }

    #[test]
    fn edited_video_google_edits_and_sidecars() {
        let files = [
            input("IMG_0600.MOV"),
            input("IMG_E0600.MOV"),
            input("PXL_1.jpg"),
            input("PXL_1-edited.jpg"),
            input("DSC_0700.NEF"),
            input("DSC_0700.xmp"),
            input("DSC_0701.JPG"),
            input("DSC_0701.JPG.xmp"),
        ];
        assert_eq!(
            render(&files),
            vec![
                vec!["IMG_0600.MOV:video", "IMG_E0600.MOV:full_size_video"],
                vec!["PXL_1.jpg:photo", "PXL_1-edited.jpg:full_size_photo"],
                vec!["DSC_0700.NEF:photo", "DSC_0700.xmp:sidecar"],
                vec!["DSC_0701.JPG:photo", "DSC_0701.JPG.xmp:sidecar"],
            ]
        );
    }

    #[test]
    fn edit_marker_without_original_is_an_original() {
        // `IMG_E0001.JPG` alone is not an edit of anything; `cafe_e1.jpg` is a real name.
        let files = [
            input("IMG_E0001.JPG"),
            input("cafe_e1.jpg"),
            input("song.m4a"),
        ];
        assert_eq!(
            render(&files),
            vec![
                vec!["IMG_E0001.JPG:photo"],
                vec!["cafe_e1.jpg:photo"],
                vec!["song.m4a:audio"],
            ]
        );
    }

    #[test]
    fn every_input_lands_in_exactly_one_group() {
        let names = [
            "a.jpg", "a.JPG", "a.heic", "a.dng", "a.mov", "a.mp4", "A_E1.jpg", "a_1.mov", "a.aae",
            "a.xmp", "a.m4a", "b.xmp", "c_o2.jpg", "c_2.jpg", "c_o2.mov", "c_e2.mov",
        ];
        let files: Vec<_> = names.iter().map(|n| input(n)).collect();
        let mut seen: Vec<usize> = group_folder(&files)
            .into_iter()
            .flat_map(|g| g.members.into_iter().map(|(i, _)| i))
            .collect();
        seen.sort();
        assert_eq!(seen, (0..names.len()).collect::<Vec<_>>());
    }
}
