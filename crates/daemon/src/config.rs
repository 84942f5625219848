//! Where Ferry keeps things (XDG state, config and runtime folders) and the one TOML file a
//! person edits. Environment variables override the file; errors say what to fix.

use std::path::{Path, PathBuf};

use ferry_core::policy::{Policy, PolicyOverrides};
use serde::{Deserialize, Serialize};

fn env_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

fn home() -> Option<PathBuf> {
    env_dir("HOME")
}

/// `$XDG_STATE_HOME/ferry`, or `~/.local/state/ferry`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = env_dir("XDG_STATE_HOME") {
        return dir.join("ferry");
    }
    match home() {
        Some(h) => h.join(".local/state/ferry"),
        None => PathBuf::from(".ferry"),
    }
}

/// `$FERRY_CONFIG`, else `$XDG_CONFIG_HOME/ferry/config.toml`, else `~/.config/ferry/config.toml`.
pub fn config_path() -> PathBuf {
    if let Some(p) = env_dir("FERRY_CONFIG") {
        return p;
    }
    if let Some(dir) = env_dir("XDG_CONFIG_HOME") {
        return dir.join("ferry/config.toml");
    }
    match home() {
        Some(h) => h.join(".config/ferry/config.toml"),
        None => PathBuf::from("ferry.toml"),
    }
}

/// The daemon's control socket folder: `$FERRY_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/ferry`,
/// else `run/` in the state folder.
pub fn runtime_dir(state_dir: &Path) -> PathBuf {
    if let Some(p) = env_dir("FERRY_RUNTIME_DIR") {
        return p;
    }
    match env_dir("XDG_RUNTIME_DIR") {
        Some(d) => d.join("ferry"),
        None => state_dir.join("run"),
    }
}

/// Creates the state folder `0700` — or tightens it, its database, the built-in server's
/// token and data to `0700`/`0600` — and says once (a warning) what it tightened. Every
/// command that opens the state calls this first.
pub fn prepare_state_dir(state_dir: &Path) -> std::io::Result<()> {
    for t in ferry_store::private::secure_state_dir(state_dir)? {
        tracing::warn!("{t}");
    }
    Ok(())
}

/// Creates a folder of Ferry's own (config, runtime) `0700`, or tightens it and says so.
pub fn prepare_private_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(from) = ferry_store::private::ensure_private_dir(dir)? {
        let t = ferry_store::private::Tightened {
            path: dir.to_owned(),
            from,
            to: ferry_store::private::DIR_MODE,
        };
        tracing::warn!("{t}");
    }
    Ok(())
}

/// Ferry's configuration folder, `$XDG_CONFIG_HOME/ferry` (else `~/.config/ferry`): the
/// configuration file (which may hold a server token) and the person's extension manifests.
pub fn config_dir() -> Option<PathBuf> {
    env_dir("XDG_CONFIG_HOME")
        .map(|d| d.join("ferry"))
        .or_else(|| home().map(|h| h.join(".config/ferry")))
}

/// Tightens Ferry's configuration folder to `0700` when it exists, saying so once. Never
/// creates it (Ferry writes nothing there) and never fails a command.
pub fn tighten_config_dir() {
    let Some(dir) = config_dir().filter(|d| d.is_dir()) else {
        return;
    };
    if let Err(e) = prepare_private_dir(&dir) {
        tracing::warn!("cannot make {} private: {e}", dir.display());
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// The ferry-server to back up to; absent: the built-in one on loopback.
    pub url: Option<String>,
    pub token: Option<String>,
    /// A file holding the token (first line), instead of `token`.
    pub token_file: Option<PathBuf>,
    /// A PEM file of certificates trusted for this server beside the system's roots: its
    /// own self-signed certificate, or the CA that signed it. Relative to this file's folder.
    pub ca_file: Option<PathBuf>,
    /// The SHA-256 fingerprint of the server's certificate (`AA:BB:…` as ferry-server prints
    /// it, or 64 hex digits): exactly that certificate is accepted, whatever signed it.
    pub cert_sha256: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransferSection {
    /// Uploads at once (default 8).
    pub max_concurrent: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConditionsSection {
    /// Obey the device's conditions (default true). `false`: upload whatever the network,
    /// power or time.
    pub observe: Option<bool>,
    /// Where sysfs is mounted (default `/sys`): a container that sees the host's elsewhere,
    /// or a test's fake tree.
    pub sysfs_root: Option<PathBuf>,
    /// How often power and temperature are re-read from sysfs, which sends no change
    /// notifications (default 60,000; at least 100).
    pub sysfs_poll_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LibrarySection {
    /// Folders the daemon watches and backs up.
    pub folders: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardSection {
    /// The dashboard's port on 127.0.0.1 (default: an ephemeral one, chosen when it starts).
    pub port: Option<u16>,
}

/// The configuration file, `config.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub server: ServerSection,
    pub transfer: TransferSection,
    pub conditions: ConditionsSection,
    pub library: LibrarySection,
    pub dashboard: DashboardSection,
    /// The upload policy over its defaults (see `ferry conditions`).
    pub policy: PolicyOverrides,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the configuration {path} is not valid: {message}\nfix it (see README.md, Configuration), or move it away to use the defaults"
    )]
    Invalid { path: PathBuf, message: String },
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FileConfig {
    /// Reads `path`; a missing file is the defaults.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(FileConfig::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        let mut cfg: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if let Some(fp) = &cfg.server.cert_sha256 {
            fp.parse::<ferry_tls::Fingerprint>()
                .map_err(|e| ConfigError::Invalid {
                    path: path.to_owned(),
                    message: format!("server.cert_sha256: {e}"),
                })?;
            if cfg.server.ca_file.is_some() {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    message: "set one of server.ca_file and server.cert_sha256 (a pinned certificate is trusted alone)".into(),
                });
            }
        }
        if let Some(ca) = &mut cfg.server.ca_file
            && ca.is_relative()
        {
            *ca = path.parent().unwrap_or(Path::new(".")).join(&*ca);
        }
        if let Some(url) = &cfg.server.url {
            ferry_core::UrlBase::parse(url).map_err(|e| ConfigError::Invalid {
                path: path.to_owned(),
                message: format!("server.url: {e}"),
            })?;
        }
        if cfg.transfer.max_concurrent == Some(0) {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: "transfer.max_concurrent must be at least 1".into(),
            });
        }
        Ok(cfg)
    }

    /// The effective policy: defaults with the file's overrides laid over.
    pub fn policy(&self) -> Policy {
        Policy::default().with(&self.policy)
    }

    /// The token: `token`, else the first line of `token_file`.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(t) = &self.server.token {
            return Ok(Some(t.clone()));
        }
        match &self.server.token_file {
            None => Ok(None),
            Some(p) => std::fs::read_to_string(p)
                .map(|t| t.lines().next().map(|l| l.trim().to_owned()))
                .map_err(|source| ConfigError::TokenFile {
                    path: p.clone(),
                    source,
                }),
        }
    }

    /// [`FileConfig::load`], and what `ferry config check` adds: the files the configuration
    /// names are usable (the CA file holds certificates). Other commands read them when
    /// they need them.
    pub fn load_checked(path: &Path) -> Result<FileConfig, ConfigError> {
        let cfg = FileConfig::load(path)?;
        if let Some(ca) = &cfg.server.ca_file {
            ferry_tls::read_ca_file(ca).map_err(|e| ConfigError::Invalid {
                path: path.to_owned(),
                message: format!("server.ca_file: {e}"),
            })?;
        }
        Ok(cfg)
    }

    /// How the configured server's certificate is trusted (`ca_file`, `cert_sha256`).
    pub fn server_trust(&self) -> ferry_tls::ServerTrust {
        ferry_tls::ServerTrust {
            ca_file: self.server.ca_file.clone(),
            // Checked by `parse`.
            cert_sha256: self
                .server
                .cert_sha256
                .as_deref()
                .and_then(|f| f.parse().ok()),
        }
    }

    pub fn max_concurrent(&self) -> usize {
        self.transfer.max_concurrent.unwrap_or(8)
    }

    pub fn observe_conditions(&self) -> bool {
        self.conditions.observe.unwrap_or(true)
    }

    /// Where the conditions are read from.
    pub fn observer(&self) -> ferry_conditions::ObserverConfig {
        let mut o = ferry_conditions::ObserverConfig::default();
        if let Some(root) = &self.conditions.sysfs_root {
            o.sysfs_root = Some(root.clone());
        }
        if let Some(ms) = self.conditions.sysfs_poll_ms {
            o.sysfs_poll = std::time::Duration::from_millis(ms.max(100));
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_sources_are_configurable_and_never_poll_in_a_loop() {
        let p = Path::new("/x/config.toml");
        let c = FileConfig::parse(
            p,
            "[conditions]\nsysfs_root = \"/host/sys\"\nsysfs_poll_ms = 0\n",
        )
        .unwrap();
        let o = c.observer();
        assert_eq!(o.sysfs_root.as_deref(), Some(Path::new("/host/sys")));
        assert_eq!(o.sysfs_poll, std::time::Duration::from_millis(100));
        let d = FileConfig::default().observer();
        assert_eq!(d.sysfs_root.as_deref(), Some(Path::new("/sys")));
        assert_eq!(d.sysfs_poll, std::time::Duration::from_secs(60));
    }

    #[test]
    fn unknown_keys_and_bad_urls_are_refused_with_the_path() {
        let p = Path::new("/x/config.toml");
        let e = FileConfig::parse(p, "[server]\nurll = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("/x/config.toml"), "{e}");
        let e = FileConfig::parse(p, "[server]\nurl = \"http://example.com\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { .. }));
        let ok = FileConfig::parse(
            p,
            "[server]\nurl = \"https://example.com\"\ntoken = \"t\"\n[policy]\nrequire_charging = true\n",
        )
        .unwrap();
        assert!(ok.policy().require_charging);
        assert_eq!(ok.token().unwrap().as_deref(), Some("t"));
    }

    #[test]
    fn server_trust_keys_are_checked_and_ca_file_is_relative_to_the_file() {
        let p = Path::new("/x/config.toml");
        let fp = "AB:".repeat(31) + "AB";
        let c = FileConfig::parse(p, &format!("[server]\ncert_sha256 = \"{fp}\"\n")).unwrap();
        let t = c.server_trust();
        assert_eq!(t.cert_sha256.map(|f| f.0), Some([0xab; 32]));
        assert_eq!(t.ca_file, None);
        let c = FileConfig::parse(p, "[server]\nca_file = \"certs/ca.pem\"\n").unwrap();
        assert_eq!(
            c.server_trust().ca_file.as_deref(),
            Some(Path::new("/x/certs/ca.pem"))
        );
        let c = FileConfig::parse(p, "[server]\nca_file = \"/etc/ca.pem\"\n").unwrap();
        assert_eq!(c.server.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        let e = FileConfig::parse(p, "[server]\ncert_sha256 = \"AB:CD\"\n").unwrap_err();
        assert!(e.to_string().contains("server.cert_sha256"), "{e}");
        assert!(e.to_string().contains("/x/config.toml"), "{e}");
        let both = format!("[server]\nca_file = \"a.pem\"\ncert_sha256 = \"{fp}\"\n");
        let e = FileConfig::parse(p, &both).unwrap_err();
        assert!(e.to_string().contains("one of server.ca_file"), "{e}");
        let e = FileConfig::parse(p, "[server]\nca = \"a.pem\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
