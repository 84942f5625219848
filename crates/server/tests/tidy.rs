//! Conventions turned into checks: every source file says why it exists, and `openapi.yaml`
//! documents every route the router serves.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    assert!(files.len() > 10);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} must open with a `//!` line",
            f.display()
        );
    }
}

#[test]
fn openapi_documents_every_route() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let router = std::fs::read_to_string(root.join("src/http.rs")).unwrap();
    let openapi = std::fs::read_to_string(root.join("openapi.yaml")).unwrap();
    let mut routes = Vec::new();
    for part in router.split(".route(").skip(1) {
        let arg = part.trim_start();
        let path = if let Some(rest) = arg.strip_prefix('"') {
            rest.split('"').next().unwrap().to_string()
        } else if arg.starts_with("UPLOADS_PATH") {
            ferry_server::http::UPLOADS_PATH.to_string()
        } else {
            panic!("unrecognised route argument: {}", &arg[..arg.len().min(40)]);
        };
        routes.push(path);
    }
    assert!(routes.len() >= 6, "{routes:?}");
    for r in routes {
        assert!(
            openapi.contains(&format!("  {r}:\n")),
            "openapi.yaml lacks path {r}"
        );
    }
}
