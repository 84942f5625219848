//! Migration (protocol version 2) against real child processes (the zoo): an export arrives
//! byte for byte; appends outside the data folder, through links or with escaping names are
//! refused; a hung, cancelled or lying exporter is stopped and its data left out; an import
//! that succeeds is reported in the next `initialize` until cleared, and one that fails or
//! crashes leaves a wiped data folder and key-value store; a version 1 extension sees nothing
//! of any of it.

mod common;

use common::{Lib, alive, now_ms};
use ferry_host::{CallOutcome, ExportOutcome, ImportOutcome, MigrationError};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Writes the exporter's data files; returns (path_in_archive, bytes).
fn data_files(lib: &Lib, id: &str) -> Vec<(String, Vec<u8>)> {
    let big: Vec<u8> = (0..700_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let files = vec![
        ("data/a.txt".to_owned(), b"hello".to_vec()),
        ("data/sub/big.bin".to_owned(), big),
        ("data/sub/ünï cödé.json".to_owned(), b"{\"k\": 1}".to_vec()),
    ];
    for (name, bytes) in &files {
        write(&lib.work_dir(id).join(name), bytes);
    }
    files
}

fn message(o: &CallOutcome) -> serde_json::Value {
    match o {
        CallOutcome::Answered {
            message: Some(m), ..
        } => serde_json::from_str(m).unwrap(),
        other => panic!("{other:?}"),
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn pid_of(lib: &Lib, id: &str) -> u32 {
    std::fs::read_to_string(lib.work_dir(id).join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_arrives_byte_for_byte_with_its_hashes() {
    let lib = Lib::new();
    let m = lib.install_with("exp", "export_good", &["export"], "");
    assert_eq!(m.protocol_version, 2);
    lib.enable(&m);
    let files = data_files(&lib, "exp");
    let host = lib.host();

    assert_eq!(
        host.exporters()
            .unwrap()
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>(),
        ["exp"]
    );
    let pre = host.migration_preflight("exp").await.unwrap();
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(pre.size_estimate_bytes, total);
    assert_eq!(pre.data_version, "zoo-1");
    assert!(pre.compressible);
    let init = read_json(&lib.work_dir("exp").join("init.json"));
    assert_eq!(init["protocol_version"], 2);

    let out = lib.dir.path().join("out");
    let (_cancel_tx, cancel) = watch::channel(false);
    let progressed = AtomicU64::new(0);
    let outcome = host
        .migration_export("exp", &out, Some(pre.size_estimate_bytes), cancel, &|n| {
            progressed.fetch_add(n, Ordering::SeqCst);
        })
        .await
        .unwrap();
    let ExportOutcome::Exported { files: got } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(progressed.load(Ordering::SeqCst), total);
    let mut want = files.clone();
    want.sort();
    assert_eq!(
        got.iter()
            .map(|f| f.path_in_archive.clone())
            .collect::<Vec<_>>(),
        want.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    );
    for (f, (_, bytes)) in got.iter().zip(&want) {
        let copied = std::fs::read(out.join(&f.path_in_archive)).unwrap();
        assert_eq!(&copied, bytes, "{}", f.path_in_archive);
        assert_eq!(f.size, bytes.len() as u64);
        assert_eq!(f.blake3, *blake3::hash(bytes).as_bytes());
    }
    // No temp file is left beside the copies.
    let mut stray = Vec::new();
    for e in walk(&out) {
        if e.to_string_lossy().contains("ferry-tmp") {
            stray.push(e);
        }
    }
    assert!(stray.is_empty(), "{stray:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_folder_of_many_small_files_is_not_refused_for_its_count() {
    // More appends than the request rate limit allows in a burst (twice 200 a second): each
    // append is paced by its own answer, so none may be refused as a flood.
    let lib = Lib::new();
    let m = lib.install_with("many", "export_good", &["export"], "");
    lib.enable(&m);
    for i in 0..1_000 {
        write(
            &lib.work_dir("many")
                .join(format!("data/{:02}/{i:04}.json", i % 10)),
            format!("{{\"n\":{i}}}").as_bytes(),
        );
    }
    let host = lib.host();
    let pre = host.migration_preflight("many").await.unwrap();
    let out = lib.dir.path().join("out");
    let (_cancel_tx, cancel) = watch::channel(false);
    let outcome = host
        .migration_export("many", &out, Some(pre.size_estimate_bytes), cancel, &|_| {})
        .await
        .unwrap();
    let ExportOutcome::Exported { files } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(files.len(), 1_000);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_outside_the_data_folder_or_with_escaping_names_are_refused() {
    let lib = Lib::new();
    let secret = lib.dir.path().join("secret.txt");
    write(&secret, b"not yours");
    let report = lib.dir.path().join("report.json");
    let m = lib.install_with(
        "exp",
        "export_bad",
        &["export"],
        &format!(
            "[config]\noutside_file = {:?}\nreport = {:?}",
            secret.to_str().unwrap(),
            report.to_str().unwrap()
        ),
    );
    lib.enable(&m);
    data_files(&lib, "exp");
    let work = lib.work_dir("exp");
    std::os::unix::fs::symlink(&secret, work.join("link")).unwrap();
    std::os::unix::fs::symlink(lib.dir.path(), work.join("linkdir")).unwrap();
    let host = lib.host();
    let out = lib.dir.path().join("out");
    let (_tx, cancel) = watch::channel(false);
    let outcome = host
        .migration_export("exp", &out, None, cancel, &|_| {})
        .await
        .unwrap();
    let ExportOutcome::Exported { files } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        files
            .iter()
            .map(|f| f.path_in_archive.as_str())
            .collect::<Vec<_>>(),
        ["data/a.txt"]
    );
    let got: Vec<(String, String)> = serde_json::from_value(read_json(&report)).unwrap();
    let want = [
        ("outside", "outside_data_folder"),
        ("escape", "outside_data_folder"),
        ("symlink", "outside_data_folder"),
        ("symlinked_dir", "outside_data_folder"),
        ("absolute_name", "bad_archive_path"),
        ("dotdot_name", "bad_archive_path"),
        ("dot_name", "bad_archive_path"),
        ("empty_name", "bad_archive_path"),
        ("folder", "outside_data_folder"),
        ("duplicate", "bad_archive_path"),
        ("under_a_file", "bad_archive_path"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
    // Nothing of the refused files reached the export.
    assert_eq!(walk(&out), [out.join("data/a.txt")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_exporter_is_stopped_named_and_left_out() {
    let lib = Lib::new();
    let m = lib.install_with("exp", "export_hang", &["export"], "");
    lib.enable(&m);
    data_files(&lib, "exp");
    let mut cfg = lib.config();
    cfg.export_idle_timeout_ms = 700;
    let host = ferry_host::Host::new(lib.store.clone(), cfg).unwrap();
    let out = lib.dir.path().join("out");
    let (_tx, cancel) = watch::channel(false);
    let outcome = host
        .migration_export("exp", &out, None, cancel, &|_| {})
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ExportOutcome::LeftOut {
            reason: "hung: no append for 700 ms".into()
        }
    );
    assert!(!alive(pid_of(&lib, "exp")), "the hung exporter is gone");
    // The one file it appended before hanging is not left in the export.
    assert!(walk(&out).is_empty(), "{:?}", walk(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_export_that_keeps_appending_is_killed() {
    let lib = Lib::new();
    let m = lib.install_with("exp", "export_stubborn", &["export"], "");
    lib.enable(&m);
    data_files(&lib, "exp");
    let host = lib.host();
    let out = lib.dir.path().join("out");
    let (cancel_tx, cancel) = watch::channel(false);
    // The person cancels once the first file has arrived.
    let outcome = host
        .migration_export("exp", &out, None, cancel, &|_| {
            let _ = cancel_tx.send(true);
        })
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ExportOutcome::LeftOut {
            reason: "cancelled".into()
        }
    );
    assert!(!alive(pid_of(&lib, "exp")));
    assert!(walk(&out).is_empty(), "{:?}", walk(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exporter_that_lies_about_its_size_is_left_out() {
    let lib = Lib::new();
    let m = lib.install_with("exp", "export_liar", &["export"], "");
    lib.enable(&m);
    data_files(&lib, "exp");
    let mut cfg = lib.config();
    cfg.export_size_slack_bytes = 100;
    let host = ferry_host::Host::new(lib.store.clone(), cfg).unwrap();
    let pre = host.migration_preflight("exp").await.unwrap();
    assert_eq!(pre.size_estimate_bytes, 10);
    let out = lib.dir.path().join("out");
    let (_tx, cancel) = watch::channel(false);
    let outcome = host
        .migration_export("exp", &out, Some(10), cancel, &|_| {})
        .await
        .unwrap();
    let ExportOutcome::LeftOut { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("lies about its size"), "{reason}");
    assert!(walk(&out).is_empty(), "{:?}", walk(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_that_answers_an_error_is_left_out_with_its_reason() {
    let lib = Lib::new();
    let m = lib.install_with("exp", "export_fails", &["export"], "");
    lib.enable(&m);
    data_files(&lib, "exp");
    let host = lib.host();
    let out = lib.dir.path().join("out");
    let (_tx, cancel) = watch::channel(false);
    let outcome = host
        .migration_export("exp", &out, None, cancel, &|_| {})
        .await
        .unwrap();
    let ExportOutcome::LeftOut { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("disk on fire"), "{reason}");
    assert!(walk(&out).is_empty());
}

fn import_folder(lib: &Lib) -> std::path::PathBuf {
    let dir = lib.dir.path().join("import");
    write(&dir.join("data/a.txt"), b"hello");
    write(&dir.join("data/sub/b.txt"), b"world");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_import_runs_before_the_first_call_and_is_reported_until_cleared() {
    let lib = Lib::new();
    let m = lib.install_with("imp", "import_good", &["upload", "import"], "");
    lib.enable(&m);
    let dir = import_folder(&lib);
    lib.store
        .lock()
        .unwrap()
        .put_pending_import("imp", &dir, "imp-old", "zoo-1", now_ms())
        .unwrap();
    let host = lib.host();

    let first = host.call_now("imp").await.unwrap();
    let msg = message(&first);
    assert_eq!(
        msg["migration"],
        serde_json::json!({"import_status": {"status": "success",
            "source": {"extension": "imp-old", "version": "zoo-1"}}})
    );
    let files: Vec<String> = serde_json::from_value(msg["files"].clone()).unwrap();
    assert!(
        files.contains(&"data/a.txt".to_owned()) && files.contains(&"data/sub/b.txt".to_owned()),
        "{files:?}"
    );
    assert_eq!(msg["kv"], serde_json::json!(["imported_from"]));
    // archive.append outside an export is refused, not served.
    assert_eq!(msg["append"], "not_now");
    assert!(!dir.exists(), "the import folder is deleted");
    assert_eq!(
        std::fs::read(lib.work_dir("imp").join("data/sub/b.txt")).unwrap(),
        b"world"
    );

    // It cleared the status: the next launch has none, and no import runs again.
    let second = host.call_now("imp").await.unwrap();
    assert_eq!(message(&second)["migration"], serde_json::Value::Null);
    assert_eq!(host.run_pending_import("imp").await.unwrap(), None);
}

async fn failing_import(mode: &str, want: &str) {
    let lib = Lib::new();
    let m = lib.install_with("imp", mode, &["upload", "import"], "");
    lib.enable(&m);
    // What the extension had before the import: all of it goes.
    write(&lib.work_dir("imp").join("old/state.json"), b"{}");
    lib.store
        .lock()
        .unwrap()
        .kv_set("imp", "token", Some("t"), 1 << 20)
        .unwrap();
    let dir = import_folder(&lib);
    lib.store
        .lock()
        .unwrap()
        .put_pending_import("imp", &dir, "imp-old", "zoo-1", now_ms())
        .unwrap();
    let host = lib.host();

    let outcome = host.run_pending_import("imp").await.unwrap();
    let Some(ImportOutcome::Failed { reason }) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains(want), "{reason}");
    let left: Vec<_> = std::fs::read_dir(lib.work_dir("imp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["stderr.log"], "only the log is kept");
    assert!(
        lib.store
            .lock()
            .unwrap()
            .kv_list("imp", "", 10)
            .unwrap()
            .is_empty()
    );
    assert!(!dir.exists());

    let first = host.call_now("imp").await.unwrap();
    let status = &message(&first)["migration"]["import_status"];
    assert_eq!(status["status"], "failure", "{status}");
    assert!(
        status["message"].as_str().unwrap().contains(want),
        "{status}"
    );
    let second = host.call_now("imp").await.unwrap();
    assert_eq!(message(&second)["migration"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_that_fails_wipes_the_data_and_is_reported() {
    failing_import("import_fail", "cannot read it").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_that_crashes_wipes_the_data_and_is_reported() {
    failing_import("import_crash", "exited before answering").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_extension_sees_no_difference() {
    let lib = Lib::new();
    let m = lib.install("v1", "v1_probe", "");
    assert_eq!(m.protocol_version, 1);
    lib.enable(&m);
    // Even with an import status recorded for it, it is never told.
    {
        let mut s = lib.store.lock().unwrap();
        s.put_pending_import("v1", Path::new("/nonexistent"), "x", "1", now_ms())
            .unwrap();
    }
    let host = lib.host();
    let o = host.call_now("v1").await.unwrap();
    let init = read_json(&lib.work_dir("v1").join("init.json"));
    assert_eq!(init["protocol_version"], 1);
    assert!(init.get("migration").is_none(), "{init}");
    assert_eq!(
        message(&o),
        serde_json::json!({"migration.clear_status": "method_not_found",
                           "archive.append": "method_not_found"})
    );
    // Migration calls to it are refused without a launch.
    match host.migration_preflight("v1").await {
        Err(MigrationError::NoExportCapability(id)) => assert_eq!(id, "v1"),
        other => panic!("{other:?}"),
    }
    let (_tx, cancel) = watch::channel(false);
    let out = lib.dir.path().join("out");
    let outcome = host
        .migration_export("v1", &out, None, cancel, &|_| {})
        .await
        .unwrap();
    assert!(
        matches!(outcome, ExportOutcome::LeftOut { .. }),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_exporter_that_answers_version_1_cannot_migrate() {
    let lib = Lib::new();
    // The `good` zoo member always answers 1, whatever is offered.
    let m = lib.install_with("liar", "good", &["upload", "export"], "");
    lib.enable(&m);
    let host = lib.host();
    match host.migration_preflight("liar").await {
        Err(MigrationError::SpeaksV1(id)) => assert_eq!(id, "liar"),
        other => panic!("{other:?}"),
    }
}
