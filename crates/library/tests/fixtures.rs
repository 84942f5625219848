//! The committed fixture library (made by `scripts/make-fixtures.py`) scanned for real:
//! grouping against the script's `expected.json`, metadata against exiftool's reading of the
//! same files (`exiftool.json`, written by the same script).

use ferry_library::{IssueReason, ScanOptions, scan};
use ferry_store::Store;
use ferry_store::library::ResourceRecord;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn library() -> PathBuf {
    fixtures().join("library").canonicalize().unwrap()
}

fn scanned() -> (tempfile::TempDir, Store, ferry_library::ScanReport) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("ferry.db")).unwrap();
    let report = scan(
        &mut store,
        &[library()],
        &ScanOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    (dir, store, report)
}

fn rel(p: &Path) -> String {
    p.strip_prefix(library())
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn grouping_matches_the_fixture_spec() {
    let (_dir, store, report) = scanned();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();

    let want: BTreeSet<BTreeSet<(String, String)>> = expected["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["path"].as_str().unwrap().to_owned(),
                        r["type"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .collect();
    let got: BTreeSet<BTreeSet<(String, String)>> = store
        .assets(u64::MAX, 0)
        .unwrap()
        .into_iter()
        .map(|a| {
            store
                .resources_of_asset(&a.id)
                .unwrap()
                .into_iter()
                .map(|r| (rel(&r.path), r.resource_type.to_string()))
                .collect()
        })
        .collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "grouping differs\nexpected but not found: {missing:#?}\nfound but not expected: {extra:#?}"
    );

    let mut want_skipped: BTreeMap<IssueReason, u64> = BTreeMap::new();
    for s in expected["skipped"].as_array().unwrap() {
        let reason = match s["reason"].as_str().unwrap() {
            "not_media" => IssueReason::NotMedia,
            "empty" => IssueReason::Empty,
            other => panic!("unknown reason {other}"),
        };
        *want_skipped.entry(reason).or_default() += 1;
    }
    for (reason, n) in want_skipped {
        assert_eq!(report.counts_by_reason.get(&reason), Some(&n), "{reason:?}");
    }
    // The two damaged JPEGs are indexed, and their damage is reported.
    let bad: BTreeSet<String> = report
        .issues
        .iter()
        .filter(|i| i.reason == IssueReason::BadMetadata)
        .map(|i| rel(&i.path))
        .collect();
    assert!(bad.contains("broken/truncated.jpg"), "{bad:?}");
    assert!(bad.contains("broken/corrupt_exif.jpg"), "{bad:?}");
}

/// exiftool's `-n` values for one file, by `Group:Tag`.
struct Oracle(BTreeMap<String, Value>);

impl Oracle {
    fn first(&self, keys: &[&str]) -> Option<&Value> {
        keys.iter().find_map(|k| self.0.get(*k))
    }
    fn text(&self, keys: &[&str]) -> Option<String> {
        self.first(keys).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
    fn num(&self, keys: &[&str]) -> Option<f64> {
        self.first(keys).and_then(|v| v.as_f64())
    }
}

fn oracle() -> BTreeMap<String, Oracle> {
    let all: Vec<BTreeMap<String, Value>> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("exiftool.json")).unwrap())
            .unwrap();
    all.into_iter()
        .map(|m| {
            let path = m["SourceFile"]
                .as_str()
                .unwrap()
                .trim_start_matches("./")
                .to_owned();
            (path, Oracle(m))
        })
        .collect()
}

/// `2024:06:11 18:20:30+02:00` → (`2024-06-11T18:20:30`, Some(7200)).
fn exif_time(s: &str) -> (String, Option<i32>) {
    ferry_library::metadata::parse_iso_datetime(s)
        .unwrap_or_else(|| panic!("exiftool gave an unreadable time {s:?}"))
}

#[test]
fn metadata_agrees_with_exiftool() {
    let (_dir, store, _) = scanned();
    let oracle = oracle();
    let resources: Vec<ResourceRecord> = store.resources_under(&library()).unwrap();
    assert!(resources.len() > 30);
    let mut checked = BTreeMap::<&str, u32>::new();
    for r in &resources {
        let path = rel(&r.path);
        let o = oracle
            .get(&path)
            .unwrap_or_else(|| panic!("exiftool has no entry for {path}"));
        let m = &r.metadata;
        let broken = path.starts_with("broken/");

        // Capture time and offset.
        let exif_dt = o.text(&["ExifIFD:DateTimeOriginal"]).map(|t| {
            let (local, _) = exif_time(&t);
            let off = o
                .text(&["ExifIFD:OffsetTimeOriginal"])
                .and_then(|s| ferry_library::metadata::parse_offset(&s));
            (local, off)
        });
        let qt_dt = o
            .text(&["Keys:CreationDate"])
            .map(|t| exif_time(&t))
            .or_else(|| {
                o.text(&["QuickTime:CreateDate"])
                    .filter(|t| !t.starts_with("0000"))
                    .map(|t| (exif_time(&t).0, Some(0)))
            });
        if let Some((local, off)) = exif_dt.or(qt_dt) {
            assert_eq!(
                m.capture_time.as_deref(),
                Some(local.as_str()),
                "{path}: capture time"
            );
            if off.is_some() {
                assert_eq!(m.utc_offset_s, off, "{path}: utc offset");
            }
            *checked.entry("capture_time").or_default() += 1;
        } else if !broken {
            assert_eq!(
                m.capture_time, None,
                "{path}: a capture time exiftool does not see"
            );
        }

        // Dimensions: the format header's, as exiftool reports it for each family.
        let w = o.num(&[
            "File:ImageWidth",
            "PNG:ImageWidth",
            "GIF:ImageWidth",
            "RIFF:ImageWidth",
            "IFD0:ImageWidth",
            "Track1:ImageWidth",
        ]);
        let h = o.num(&[
            "File:ImageHeight",
            "PNG:ImageHeight",
            "GIF:ImageHeight",
            "RIFF:ImageHeight",
            "IFD0:ImageHeight",
            "Track1:ImageHeight",
        ]);
        if let (Some(w), Some(h)) = (w, h) {
            assert_eq!(m.width, Some(w as u32), "{path}: width");
            assert_eq!(m.height, Some(h as u32), "{path}: height");
            *checked.entry("dimensions").or_default() += 1;
        }

        // Duration, for QuickTime/MP4 files.
        if let Some(d) = o.num(&["QuickTime:Duration"]) {
            let ours = m
                .duration_ms
                .unwrap_or_else(|| panic!("{path}: no duration")) as f64;
            assert!(
                (ours - d * 1000.0).abs() <= 1.0,
                "{path}: duration {ours} ms vs {d} s"
            );
            *checked.entry("duration").or_default() += 1;
        }

        // Make and model.
        for (ours, keys) in [
            (&m.make, ["IFD0:Make", "Keys:Make"]),
            (&m.model, ["IFD0:Model", "Keys:Model"]),
        ] {
            match o.text(&keys) {
                Some(want) => {
                    assert_eq!(ours.as_deref(), Some(want.trim()), "{path}: {keys:?}");
                    *checked.entry("make_model").or_default() += 1;
                }
                None if !broken => assert_eq!(ours, &None, "{path}: {keys:?} exiftool lacks"),
                None => {}
            }
        }

        // GPS, signed decimal degrees.
        match (
            o.num(&["Composite:GPSLatitude"]),
            o.num(&["Composite:GPSLongitude"]),
        ) {
            (Some(lat), Some(lon)) => {
                let g = m.gps.unwrap_or_else(|| panic!("{path}: no GPS"));
                assert!(
                    (g.latitude - lat).abs() < 1e-5,
                    "{path}: lat {} vs {lat}",
                    g.latitude
                );
                assert!(
                    (g.longitude - lon).abs() < 1e-5,
                    "{path}: lon {} vs {lon}",
                    g.longitude
                );
                if let Some(alt) = o.num(&["Composite:GPSAltitude"]) {
                    let ours = g
                        .altitude_m
                        .unwrap_or_else(|| panic!("{path}: no altitude"));
                    assert!((ours - alt).abs() < 0.01, "{path}: alt {ours} vs {alt}");
                }
                *checked.entry("gps").or_default() += 1;
            }
            _ => assert_eq!(m.gps, None, "{path}: GPS exiftool does not see"),
        }

        // Apple's Live Photo identifier, from the MakerNote or the QuickTime keys.
        let cid = o.text(&[
            "Apple:MediaGroupUUID",
            "Apple:ContentIdentifier",
            "Keys:ContentIdentifier",
        ]);
        assert_eq!(m.content_identifier, cid, "{path}: content identifier");
        if cid.is_some() {
            *checked.entry("content_identifier").or_default() += 1;
        }
    }
    // The comparison must have had something to compare in every family.
    for (field, min) in [
        ("capture_time", 20),
        ("dimensions", 25),
        ("duration", 5),
        ("make_model", 20),
        ("gps", 4),
        ("content_identifier", 8),
    ] {
        let n = checked.get(field).copied().unwrap_or(0);
        assert!(
            n >= min,
            "only {n} files had a {field} to check (want ≥ {min}): {checked:?}"
        );
    }
}
