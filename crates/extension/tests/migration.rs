//! Migration round trips through the real host (`ferry-host`), one "device" per temporary
//! state folder: the Rust SDK (the probe, `mode = "migrate"`) and the Python example export
//! their data folder on one device and import it on another, as real child processes. The
//! imported files are byte-identical, the import status reaches the next `initialize`, and
//! the extension's clear makes it go.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_host::{CallOutcome, ExportOutcome, Grant, Host, HostConfig, Manifest, consent};
use ferry_store::Store;
use tokio::sync::watch;

struct Device {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Arc<Mutex<Store>>,
    host: Host,
    data_dir: PathBuf,
}

fn now_ms() -> i64 {
    ferry_host::now_ms()
}

fn device(id: &str, manifest: &str) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let ext_dir = root.join("extensions");
    let data_dir = root.join("state");
    std::fs::create_dir_all(&ext_dir).unwrap();
    std::fs::create_dir_all(&data_dir).unwrap();
    let store = Store::open(&data_dir.join("ferry.db")).unwrap();
    let path = ext_dir.join(format!("{id}.toml"));
    std::fs::write(&path, manifest).unwrap();
    let m = Manifest::load(&path).unwrap();
    assert_eq!(m.protocol_version, 2);
    let store = Arc::new(Mutex::new(store));
    consent::enable(
        &mut store.lock().unwrap(),
        &m,
        Grant::requested(&m),
        now_ms(),
    )
    .unwrap();
    let mut cfg = HostConfig::new(ext_dir, data_dir.clone());
    cfg.will_terminate_grace_ms = 1000;
    let host = Host::new(store.clone(), cfg).unwrap();
    Device {
        root,
        store,
        host,
        data_dir: data_dir.join("extensions").join(id),
        _dir: dir,
    }
}

fn message(o: &CallOutcome) -> serde_json::Value {
    match o {
        CallOutcome::Answered {
            message: Some(m), ..
        } => serde_json::from_str(m).unwrap(),
        other => panic!("{other:?}"),
    }
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
                if rel != "stderr.log" {
                    out.push((rel, std::fs::read(&p).unwrap()));
                }
            }
        }
    }
    out.sort();
    out
}

/// Exports `id` from `a` (its data already written), imports it into `b`; returns the
/// first and second `process_jobs` answers on `b`.
async fn round_trip(id: &str, a: &Device, b: &Device) -> (serde_json::Value, serde_json::Value) {
    let pre = a.host.migration_preflight(id).await.unwrap();
    let out = a.root.join("export");
    let (_tx, cancel) = watch::channel(false);
    let outcome = a
        .host
        .migration_export(id, &out, Some(pre.size_estimate_bytes), cancel, &|_| {})
        .await
        .unwrap();
    let ExportOutcome::Exported {
        files: mut exported,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    // The order is the extension's; compare by name.
    exported.sort_by(|x, y| x.path_in_archive.cmp(&y.path_in_archive));
    let before = files(&a.data_dir);
    assert_eq!(
        exported
            .iter()
            .map(|f| f.path_in_archive.clone())
            .collect::<Vec<_>>(),
        before.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        pre.size_estimate_bytes,
        exported.iter().map(|f| f.size).sum::<u64>()
    );
    for (f, (_, bytes)) in exported.iter().zip(&before) {
        assert_eq!(f.blake3, *blake3::hash(bytes).as_bytes());
    }

    // The transport is the other engineer's: here the folder is simply copied across.
    let incoming = b.root.join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    for (name, bytes) in files(&out) {
        let p = incoming.join(&name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    b.store
        .lock()
        .unwrap()
        .put_pending_import(id, &incoming, id, &pre.data_version, now_ms())
        .unwrap();
    let first = message(&b.host.call_now(id).await.unwrap());
    assert!(!incoming.exists(), "the import folder is removed");
    // What arrived is what left (the Python example rewrites nothing it imported).
    let after = files(&b.data_dir);
    for (name, bytes) in &before {
        let got = after.iter().find(|(n, _)| n == name);
        assert_eq!(got.map(|(_, b)| b), Some(bytes), "{name}");
    }
    let second = message(&b.host.call_now(id).await.unwrap());
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_exports_and_imports_through_the_real_host() {
    let manifest = format!(
        "id = \"probe\"\nexec = {:?}\ncapabilities = [\"export\", \"import\"]\n\
         [migration]\ndata_version = \"probe-1\"\n[config]\nmode = \"migrate\"\n",
        env!("CARGO_BIN_EXE_ferry-extension-probe")
    );
    let a = device("probe", &manifest);
    let b = device("probe", &manifest);
    std::fs::create_dir_all(a.data_dir.join("db")).unwrap();
    std::fs::write(a.data_dir.join("db/state.bin"), vec![7u8; 100_000]).unwrap();
    std::fs::write(a.data_dir.join("cursor.txt"), "ct1.x.42").unwrap();
    let (first, second) = round_trip("probe", &a, &b).await;
    assert_eq!(
        first["import_status"],
        serde_json::json!({"status": "success", "source": {"extension": "probe", "version": "probe-1"}})
    );
    assert_eq!(second["import_status"], serde_json::Value::Null);
    assert_eq!(
        b.store
            .lock()
            .unwrap()
            .kv_get("probe", "imported_from")
            .unwrap()
            .as_deref(),
        Some("probe")
    );
}

fn python() -> String {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(p).is_file() {
            return p.to_owned();
        }
    }
    "python3".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_exports_and_imports_through_the_real_host() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../extensions/python-example/ferry_example.py");
    let manifest = format!(
        "id = \"python-example\"\nexec = {:?}\nargs = [{:?}]\n\
         capabilities = [\"upload\", \"export\", \"import\"]\n\
         destination_bases = [\"https://example.org/v1/\"]\n\
         [config]\nupload_url = \"https://example.org/v1/uploads\"\n",
        python(),
        script.to_str().unwrap()
    );
    let a = device("python-example", &manifest);
    let b = device("python-example", &manifest);
    std::fs::create_dir_all(a.data_dir.join("notes")).unwrap();
    std::fs::write(a.data_dir.join("notes/n.txt"), "remember the milk").unwrap();
    let (first, second) = round_trip("python-example", &a, &b).await;
    // settings.json (written at its first initialize) and the note both travelled.
    assert!(files(&b.data_dir).iter().any(|(n, _)| n == "settings.json"));
    assert_eq!(first["import_status"], "success", "{first}");
    assert!(second.get("import_status").is_none(), "{second}");
}
