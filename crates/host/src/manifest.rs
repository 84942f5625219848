//! The manifest: what an installed extension is and what it asks for, one TOML file per
//! extension in the extensions folder. Parsing never panics; every rule broken is a typed
//! [`ManifestError`] naming the file.

use ferry_core::UrlBase;
use ferry_core::job::DEFAULT_JOB_LIMIT;
use ferry_extension::protocol::{MIGRATION_PROTOCOL_VERSION, PROTOCOL_VERSION, Scope};
use std::path::{Path, PathBuf};

/// Default per-call time budget.
pub const DEFAULT_CALL_BUDGET_MS: u64 = 30_000;
/// Bounds on a manifest's call budget: long enough to do something, short enough that a hung
/// extension cannot hold its slot for long.
pub const MIN_CALL_BUDGET_MS: u64 = 500;
pub const MAX_CALL_BUDGET_MS: u64 = 10 * 60_000;
/// The largest job limit a manifest may request.
pub const MAX_JOB_LIMIT: u32 = 100_000;
/// Manifests larger than this are refused unread.
const MAX_MANIFEST_BYTES: u64 = 256 * 1024;

/// What an extension may declare it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Upload,
    Export,
    Import,
}

/// One installed extension.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Manifest {
    pub id: String,
    pub name: String,
    /// The program to run (a relative path is relative to the manifest's folder).
    pub exec: PathBuf,
    pub args: Vec<String>,
    /// The scope it asks for; the user may grant less.
    pub scope: Scope,
    pub destination_bases: Vec<UrlBase>,
    pub job_limit: u32,
    pub call_budget_ms: u64,
    pub capabilities: Vec<Capability>,
    /// The protocol version Ferry offers in `initialize`: 2 when the manifest says
    /// `protocol_version = 2` or lists `export` / `import`, else 1 (a version 1 SDK refuses
    /// any other offer, so it is never made to an extension that did not ask).
    pub protocol_version: u32,
    /// The `[migration]` table (defaults when absent).
    pub migration: MigrationSettings,
    /// The `[config]` table, passed to the extension in `initialize`.
    pub config: serde_json::Value,
    /// The file it was read from.
    pub path: PathBuf,
}

/// The `[migration]` table of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationSettings {
    /// The format version of the extension's data (default "1").
    pub data_version: String,
    /// Whether its data gains from compression in transit (default false).
    pub compressible: bool,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            data_version: "1".into(),
            compressible: false,
        }
    }
}

impl Manifest {
    /// Whether the manifest lists `cap`.
    pub fn has(&self, cap: Capability) -> bool {
        self.capabilities.contains(&cap)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest {path} is over {MAX_MANIFEST_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("manifest {path} is not valid TOML for a manifest: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("manifest {path}: {field}: {problem}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        problem: String,
    },
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    id: String,
    name: Option<String>,
    exec: String,
    #[serde(default)]
    args: Vec<String>,
    scope: Option<toml::Value>,
    #[serde(default)]
    destination_bases: Vec<String>,
    job_limit: Option<i64>,
    call_budget_ms: Option<i64>,
    #[serde(default)]
    capabilities: Vec<String>,
    protocol_version: Option<i64>,
    migration: Option<RawMigration>,
    config: Option<toml::Table>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigration {
    data_version: Option<String>,
    compressible: Option<bool>,
}

/// Whether `id` is a usable extension id: 1–64 bytes of `[a-z0-9._-]`, starting with a
/// letter or digit (it names files and rows).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Whether `folder` is a usable scope folder: relative, `/`-separated, no `.`/`..` parts.
pub fn valid_folder(folder: &str) -> bool {
    !folder.is_empty()
        && !folder.starts_with('/')
        && folder
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

impl Manifest {
    /// Reads and checks the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let io = |source| ManifestError::Io {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                path: path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Manifest::parse(&text, path)
    }

    /// Parses manifest text; `path` names it in errors and anchors a relative `exec`.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Syntax {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        let invalid = |field: &'static str, problem: String| ManifestError::Invalid {
            path: path.to_owned(),
            field,
            problem,
        };
        if !valid_id(&raw.id) {
            return Err(invalid(
                "id",
                format!(
                    "{:?} is not 1-64 characters of a-z, 0-9, '.', '_', '-' starting with a letter or digit",
                    raw.id
                ),
            ));
        }
        if raw.exec.trim().is_empty() {
            return Err(invalid("exec", "is empty".into()));
        }
        let exec = PathBuf::from(&raw.exec);
        let exec = if exec.is_relative() && raw.exec.contains('/') {
            path.parent().unwrap_or(Path::new(".")).join(exec)
        } else {
            exec
        };
        let scope = match raw.scope {
            None => Scope::Library,
            Some(toml::Value::String(s)) if s == "library" => Scope::Library,
            Some(toml::Value::Array(items)) => {
                let mut folders = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(f) if valid_folder(f.trim_end_matches('/')) => {
                            folders.push(f.trim_end_matches('/').to_owned())
                        }
                        other => {
                            return Err(invalid(
                                "scope",
                                format!("{other} is not a relative folder without '.' or '..'"),
                            ));
                        }
                    }
                }
                if folders.is_empty() {
                    return Err(invalid("scope", "lists no folder".into()));
                }
                Scope::Folders { folders }
            }
            Some(other) => {
                return Err(invalid(
                    "scope",
                    format!("{other} is neither \"library\" nor a list of folders"),
                ));
            }
        };
        let mut destination_bases = Vec::with_capacity(raw.destination_bases.len());
        for b in &raw.destination_bases {
            destination_bases
                .push(UrlBase::parse(b).map_err(|e| invalid("destination_bases", e.to_string()))?);
        }
        let job_limit = match raw.job_limit {
            None => DEFAULT_JOB_LIMIT,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_JOB_LIMIT).contains(n))
                .ok_or_else(|| {
                    invalid("job_limit", format!("{n} is not in 1..={MAX_JOB_LIMIT}"))
                })?,
        };
        let call_budget_ms = match raw.call_budget_ms {
            None => DEFAULT_CALL_BUDGET_MS,
            Some(n) => u64::try_from(n)
                .ok()
                .filter(|n| (MIN_CALL_BUDGET_MS..=MAX_CALL_BUDGET_MS).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "call_budget_ms",
                        format!("{n} is not in {MIN_CALL_BUDGET_MS}..={MAX_CALL_BUDGET_MS}"),
                    )
                })?,
        };
        let mut capabilities = Vec::new();
        for c in &raw.capabilities {
            let cap = match c.as_str() {
                "upload" => Capability::Upload,
                "export" => Capability::Export,
                "import" => Capability::Import,
                other => {
                    return Err(invalid(
                        "capabilities",
                        format!("unknown capability {other:?} (known: upload, export, import)"),
                    ));
                }
            };
            if !capabilities.contains(&cap) {
                capabilities.push(cap);
            }
        }
        if capabilities.contains(&Capability::Upload) && destination_bases.is_empty() {
            return Err(invalid(
                "destination_bases",
                "an extension that uploads must declare at least one base".into(),
            ));
        }
        let migrates = capabilities
            .iter()
            .any(|c| matches!(c, Capability::Export | Capability::Import));
        let protocol_version = match raw.protocol_version {
            None if migrates => MIGRATION_PROTOCOL_VERSION,
            None => PROTOCOL_VERSION,
            Some(n) if n == i64::from(MIGRATION_PROTOCOL_VERSION) => MIGRATION_PROTOCOL_VERSION,
            Some(n) if n == i64::from(PROTOCOL_VERSION) && !migrates => PROTOCOL_VERSION,
            Some(n) if n == i64::from(PROTOCOL_VERSION) => {
                return Err(invalid(
                    "protocol_version",
                    "export and import need protocol version 2".into(),
                ));
            }
            Some(n) => {
                return Err(invalid("protocol_version", format!("{n} is not 1 or 2")));
            }
        };
        let migration = match raw.migration {
            None => MigrationSettings::default(),
            Some(m) => {
                let data_version = m.data_version.unwrap_or_else(|| "1".into());
                // It travels to the importing side and shows in status: short and printable.
                if data_version.is_empty()
                    || data_version.len() > 64
                    || data_version.chars().any(char::is_control)
                {
                    return Err(invalid(
                        "migration.data_version",
                        format!("{data_version:?} is not 1-64 printable characters"),
                    ));
                }
                MigrationSettings {
                    data_version,
                    compressible: m.compressible.unwrap_or(false),
                }
            }
        };
        let config = match raw.config {
            None => serde_json::Value::Object(Default::default()),
            Some(table) => {
                serde_json::to_value(table).map_err(|e| invalid("config", e.to_string()))?
            }
        };
        Ok(Manifest {
            name: raw.name.unwrap_or_else(|| raw.id.clone()),
            id: raw.id,
            exec,
            args: raw.args,
            scope,
            destination_bases,
            job_limit,
            call_budget_ms,
            capabilities,
            protocol_version,
            migration,
            config,
            path: path.to_owned(),
        })
    }
}

/// Every `*.toml` in `dir`, parsed: the good ones by id, and the errors of the others. A
/// missing folder holds no extensions. Two manifests with one id: the first by file name wins
/// and the second is reported.
pub fn load_dir(dir: &Path) -> (Vec<Manifest>, Vec<ManifestError>) {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (vec![], vec![]),
        Err(source) => {
            return (
                vec![],
                vec![ManifestError::Io {
                    path: dir.to_owned(),
                    source,
                }],
            );
        }
    };
    paths.sort();
    let mut good: Vec<Manifest> = Vec::new();
    let mut bad = Vec::new();
    for p in paths {
        match Manifest::load(&p) {
            Ok(m) if good.iter().any(|g| g.id == m.id) => bad.push(ManifestError::Invalid {
                path: p,
                field: "id",
                problem: format!("{:?} is already installed by another manifest", m.id),
            }),
            Ok(m) => good.push(m),
            Err(e) => bad.push(e),
        }
    }
    good.sort_by(|a, b| a.id.cmp(&b.id));
    (good, bad)
}

/// Every extension installed in any of `dirs`, searched in order: an id already found in an
/// earlier folder is reported as a duplicate rather than replacing it.
pub fn load_dirs(dirs: &[PathBuf]) -> (Vec<Manifest>, Vec<ManifestError>) {
    let mut good: Vec<Manifest> = Vec::new();
    let mut bad = Vec::new();
    for dir in dirs {
        let (g, b) = load_dir(dir);
        bad.extend(b);
        for m in g {
            if let Some(first) = good.iter().find(|x| x.id == m.id) {
                bad.push(ManifestError::Invalid {
                    path: m.path.clone(),
                    field: "id",
                    problem: format!(
                        "{:?} is already installed by {}",
                        m.id,
                        first.path.display()
                    ),
                });
            } else {
                good.push(m);
            }
        }
    }
    good.sort_by(|a, b| a.id.cmp(&b.id));
    (good, bad)
}

/// Finds one installed extension by id in any of `dirs` (the first folder that has it).
pub fn find_in(dirs: &[PathBuf], id: &str) -> Result<Option<Manifest>, ManifestError> {
    for dir in dirs {
        if let Some(m) = find(dir, id)? {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// Finds one installed extension by id.
pub fn find(dir: &Path, id: &str) -> Result<Option<Manifest>, ManifestError> {
    let (good, bad) = load_dir(dir);
    if let Some(m) = good.into_iter().find(|m| m.id == id) {
        return Ok(Some(m));
    }
    // A broken manifest named after the id is worth reporting rather than "not installed".
    let expected = dir.join(format!("{id}.toml"));
    for e in bad {
        let path = match &e {
            ManifestError::Io { path, .. }
            | ManifestError::TooLarge { path }
            | ManifestError::Syntax { path, .. }
            | ManifestError::Invalid { path, .. } => path,
        };
        if *path == expected {
            return Err(e);
        }
    }
    Ok(None)
}

/// `$FERRY_EXTENSIONS_DIR`, else `$XDG_CONFIG_HOME/ferry/extensions`, else
/// `~/.config/ferry/extensions`.
pub fn default_extensions_dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("FERRY_EXTENSIONS_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = var("XDG_CONFIG_HOME") {
        return PathBuf::from(dir).join("ferry/extensions");
    }
    match var("HOME") {
        Some(home) => PathBuf::from(home).join(".config/ferry/extensions"),
        None => PathBuf::from(".ferry/extensions"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("/ext/x.toml"))
    }

    #[test]
    fn a_full_manifest_parses() {
        let m = parse(
            r#"
            id = "ferry-backup"
            name = "Ferry Backup"
            exec = "./bin/backup"
            args = ["--verbose"]
            scope = ["Photos/2024", "Camera/"]
            destination_bases = ["http://127.0.0.1:8080/v1/"]
            job_limit = 50
            call_budget_ms = 5000
            capabilities = ["upload"]
            [config]
            server = "http://127.0.0.1:8080"
            "#,
        )
        .unwrap();
        assert_eq!(m.exec, PathBuf::from("/ext/./bin/backup"));
        assert_eq!(
            m.scope,
            Scope::Folders {
                folders: vec!["Photos/2024".into(), "Camera".into()]
            }
        );
        assert_eq!(m.job_limit, 50);
        assert_eq!(m.call_budget_ms, 5000);
        assert_eq!(m.config["server"], "http://127.0.0.1:8080");
    }

    #[test]
    fn defaults_apply() {
        let m = parse("id = \"a\"\nexec = \"python3\"\n").unwrap();
        assert_eq!(m.scope, Scope::Library);
        assert_eq!(m.job_limit, DEFAULT_JOB_LIMIT);
        assert_eq!(m.call_budget_ms, DEFAULT_CALL_BUDGET_MS);
        assert_eq!(m.exec, PathBuf::from("python3"));
        assert_eq!(m.config, serde_json::json!({}));
    }

    #[test]
    fn migration_capabilities_imply_protocol_version_2() {
        let m = parse("id = \"a\"\nexec = \"x\"\n").unwrap();
        assert_eq!(m.protocol_version, 1);
        assert_eq!(m.migration, MigrationSettings::default());
        let m = parse("id = \"a\"\nexec = \"x\"\ncapabilities = [\"export\"]\n").unwrap();
        assert_eq!(m.protocol_version, 2);
        assert!(m.has(Capability::Export) && !m.has(Capability::Import));
        let m = parse(
            "id = \"a\"\nexec = \"x\"\nprotocol_version = 2\n[migration]\ndata_version = \"7\"\ncompressible = true\n",
        )
        .unwrap();
        assert_eq!(m.protocol_version, 2);
        assert_eq!(m.migration.data_version, "7");
        assert!(m.migration.compressible);
    }

    #[test]
    fn bad_manifests_are_typed_errors() {
        let cases = [
            ("exec = \"x\"", "syntax"),
            ("id = \"A B\"\nexec = \"x\"", "id"),
            ("id = \"a\"\nexec = \" \"", "exec"),
            ("id = \"a\"\nexec = \"x\"\nscope = [\"../up\"]", "scope"),
            ("id = \"a\"\nexec = \"x\"\nscope = 3", "scope"),
            ("id = \"a\"\nexec = \"x\"\njob_limit = 0", "job_limit"),
            (
                "id = \"a\"\nexec = \"x\"\ncall_budget_ms = -1",
                "call_budget_ms",
            ),
            (
                "id = \"a\"\nexec = \"x\"\ncapabilities = [\"fly\"]",
                "capabilities",
            ),
            (
                "id = \"a\"\nexec = \"x\"\ndestination_bases = [\"http://example.com/\"]",
                "destination_bases",
            ),
            (
                "id = \"a\"\nexec = \"x\"\ncapabilities = [\"upload\"]",
                "destination_bases",
            ),
            ("id = \"a\"\nexec = \"x\"\nsurprise = 1", "syntax"),
            (
                "id = \"a\"\nexec = \"x\"\nprotocol_version = 3",
                "protocol_version",
            ),
            (
                "id = \"a\"\nexec = \"x\"\nprotocol_version = 1\ncapabilities = [\"import\"]",
                "protocol_version",
            ),
            (
                "id = \"a\"\nexec = \"x\"\n[migration]\ndata_version = \"\"",
                "migration.data_version",
            ),
            ("id = \"a\"\nexec = \"x\"\n[migration]\nextra = 1", "syntax"),
        ];
        for (text, want) in cases {
            match parse(text) {
                Err(ManifestError::Syntax { .. }) => assert_eq!(want, "syntax", "{text}"),
                Err(ManifestError::Invalid { field, .. }) => assert_eq!(field, want, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
