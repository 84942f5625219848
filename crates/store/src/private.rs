//! Ferry's state is its owner's alone: folders `0700`, files `0600` (the modes the XDG base
//! directory specification asks for). The state database holds every path, capture time and
//! GPS position of the library, the state folder the built-in server's copy of every photo and
//! its token; on a system whose home folders are traversable, any other mode lets every local
//! account read them.
//!
//! Folders are created `0700`; existing ones (and files) with group or other bits are
//! tightened, and the caller is told what changed so it can say so once (the next start finds
//! nothing to tighten).

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of every folder Ferry keeps state in.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file Ferry keeps state in.
pub const FILE_MODE: u32 = 0o600;

/// The files of the state folder that must never be group- or world-readable.
const STATE_FILES: &[&str] = &[
    "ferry.db",
    "ferry.db-wal",
    "ferry.db-shm",
    "server-token",
    "server-port",
    "daemon.lock",
];

/// The folders in the state folder: the built-in server's data (a copy of every photo), the
/// extensions' manifests, data and logs, the fallback runtime folder.
const STATE_DIRS: &[&str] = &["server", "extensions", "run"];

/// One mode Ferry tightened: `path` was `from`, is now `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    pub path: PathBuf,
    pub from: u32,
    pub to: u32,
}

impl std::fmt::Display for Tightened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tightened permissions of {} from {:04o} to {:04o}",
            self.path.display(),
            self.from,
            self.to
        )
    }
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

/// Sets `path` to `to` when its mode grants anything to group or others; returns the old mode
/// when it changed.
fn tighten(path: &Path, meta: &std::fs::Metadata, to: u32) -> io::Result<Option<u32>> {
    let from = mode_of(meta);
    if from & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(to))?;
    Ok(Some(from))
}

/// Creates the folder `path` (and its missing parents) `0700`, or tightens an existing one to
/// `0700` when group or others have any access. Returns the old mode when it tightened one.
pub fn ensure_private_dir(path: &Path) -> io::Result<Option<u32>> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => tighten(path, &meta, DIR_MODE),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a folder", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_private_dir_all(path)?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Creates the folders missing on the way to `path` `0700`; leaves existing ones as they are.
pub fn create_private_dir_all(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Tightens the file `path` to `0600` when group or others have any access; an absent file is
/// left absent. Returns the old mode when it tightened it.
pub fn ensure_private_file(path: &Path) -> io::Result<Option<u32>> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => tighten(path, &meta, FILE_MODE),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Tightens an existing folder to `0700` (an absent one stays absent).
fn ensure_private_existing_dir(path: &Path) -> io::Result<Option<u32>> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => tighten(path, &meta, DIR_MODE),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes the state folder private: creates it `0700` (or tightens it), and tightens the
/// state files and folders already in it (the database and its WAL, the built-in server's
/// token and data, the extensions' folder). Returns what it tightened, for the caller to say.
pub fn secure_state_dir(state_dir: &Path) -> io::Result<Vec<Tightened>> {
    let mut done = Vec::new();
    let mut note = |path: PathBuf, from: Option<u32>, to: u32| {
        if let Some(from) = from {
            done.push(Tightened { path, from, to });
        }
    };
    note(
        state_dir.to_owned(),
        ensure_private_dir(state_dir)?,
        DIR_MODE,
    );
    for name in STATE_DIRS {
        let p = state_dir.join(name);
        let from = ensure_private_existing_dir(&p)?;
        note(p, from, DIR_MODE);
    }
    for name in STATE_FILES {
        let p = state_dir.join(name);
        let from = ensure_private_file(&p)?;
        note(p, from, FILE_MODE);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn chmod(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn creates_private_folders_with_their_parents() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b/state");
        assert_eq!(ensure_private_dir(&d).unwrap(), None);
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&t.path().join("a")), 0o700);
        assert_eq!(ensure_private_dir(&d).unwrap(), None, "nothing to do again");
    }

    #[test]
    fn tightens_an_open_state_folder_once() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path().join("state");
        std::fs::create_dir(&s).unwrap();
        std::fs::create_dir(s.join("server")).unwrap();
        std::fs::write(s.join("ferry.db"), b"x").unwrap();
        std::fs::write(s.join("server-token"), b"t").unwrap();
        chmod(&s, 0o755);
        chmod(&s.join("server"), 0o750);
        chmod(&s.join("ferry.db"), 0o644);
        chmod(&s.join("server-token"), 0o600);
        let done = secure_state_dir(&s).unwrap();
        let said: Vec<String> = done.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            said,
            [
                format!("tightened permissions of {} from 0755 to 0700", s.display()),
                format!(
                    "tightened permissions of {} from 0750 to 0700",
                    s.join("server").display()
                ),
                format!(
                    "tightened permissions of {} from 0644 to 0600",
                    s.join("ferry.db").display()
                ),
            ]
        );
        assert_eq!(mode(&s), 0o700);
        assert_eq!(mode(&s.join("server")), 0o700);
        assert_eq!(mode(&s.join("ferry.db")), 0o600);
        assert_eq!(mode(&s.join("server-token")), 0o600);
        assert!(secure_state_dir(&s).unwrap().is_empty(), "said once");
    }

    #[test]
    fn the_store_and_its_wal_are_0600_new_or_old() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("ferry.db");
        let sides =
            |db: &Path| ["", "-wal", "-shm"].map(|s| PathBuf::from(format!("{}{s}", db.display())));
        let store = crate::Store::open(&db).unwrap();
        for p in sides(&db) {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        drop(store);
        // An older Ferry's open database is closed up when opened.
        let old = t.path().join("old.db");
        drop(crate::Store::open(&old).unwrap());
        chmod(&old, 0o644);
        let store = crate::Store::open(&old).unwrap();
        for p in sides(&old) {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        drop(store);
    }

    #[test]
    fn a_file_where_the_folder_should_be_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("state");
        std::fs::write(&f, b"").unwrap();
        assert!(ensure_private_dir(&f).is_err());
        assert_eq!(ensure_private_file(&t.path().join("absent")).unwrap(), None);
    }
}
