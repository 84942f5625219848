//! Enabling and disabling an extension: the user's consent, recorded durably before anything
//! runs. What is granted may be less than the manifest asks (fewer folders, a lower limit),
//! never more.

use crate::HostError;
use crate::manifest::{Manifest, valid_folder};
use ferry_core::UrlBase;
use ferry_extension::protocol::Scope;
use ferry_store::Store;
use ferry_store::extensions::Consent;
use uuid::Uuid;

/// What the user grants when enabling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub scope: Scope,
    pub destination_bases: Vec<UrlBase>,
    pub job_limit: u32,
}

impl Grant {
    /// Everything the manifest asks for.
    pub fn requested(manifest: &Manifest) -> Grant {
        Grant {
            scope: manifest.scope.clone(),
            destination_bases: manifest.destination_bases.clone(),
            job_limit: manifest.job_limit,
        }
    }

    /// The same grant limited to these folders (the user's "limited access").
    pub fn with_folders(mut self, folders: Vec<String>) -> Grant {
        self.scope = Scope::Folders { folders };
        self
    }
}

/// What disabling did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DisableReport {
    pub id: String,
    /// False if the extension was not enabled (nothing changed).
    pub was_enabled: bool,
    /// The registered and pending jobs cancelled, in the commit that recorded the disable.
    pub cancelled_jobs: Vec<Uuid>,
}

/// The scope a consent row records, as the protocol states it.
pub fn scope_of(consent: &Consent) -> Scope {
    match &consent.folders {
        None => Scope::Library,
        Some(folders) => Scope::Folders {
            folders: folders.clone(),
        },
    }
}

/// Records the user's consent for `manifest` with `grant`, durably; the extension may be called
/// from then on. Refuses a grant wider than the manifest's request.
pub fn enable(
    store: &mut Store,
    manifest: &Manifest,
    grant: Grant,
    now_ms: i64,
) -> Result<Consent, HostError> {
    let wider = |problem: String| HostError::Grant {
        id: manifest.id.clone(),
        problem,
    };
    if grant.job_limit == 0 || grant.job_limit > manifest.job_limit {
        return Err(wider(format!(
            "job limit {} is not in 1..={}",
            grant.job_limit, manifest.job_limit
        )));
    }
    if let Some(b) = grant
        .destination_bases
        .iter()
        .find(|b| !manifest.destination_bases.contains(b))
    {
        return Err(wider(format!(
            "destination base {} is not one the extension declared",
            b.as_str()
        )));
    }
    let folders = match &grant.scope {
        Scope::Library => {
            if manifest.scope != Scope::Library {
                return Err(wider(
                    "the extension asks for some folders only, not the whole library".into(),
                ));
            }
            None
        }
        Scope::Folders { folders } => {
            let mut clean = Vec::with_capacity(folders.len());
            for f in folders {
                let f = f.trim_end_matches('/');
                if !valid_folder(f) {
                    return Err(wider(format!(
                        "{f:?} is not a folder relative to the library root"
                    )));
                }
                if let Scope::Folders { folders: asked } = &manifest.scope
                    && !asked.iter().any(|a| {
                        f == a
                            || f.strip_prefix(a.as_str())
                                .is_some_and(|r| r.starts_with('/'))
                    })
                {
                    return Err(wider(format!("{f:?} is outside the folders it asks for")));
                }
                clean.push(f.to_owned());
            }
            if clean.is_empty() {
                return Err(wider("no folder granted".into()));
            }
            Some(clean)
        }
    };
    let consent = Consent {
        id: manifest.id.clone(),
        folders,
        bases: grant.destination_bases,
        job_limit: grant.job_limit,
        enabled_at_ms: now_ms,
        disabled_at_ms: None,
    };
    store.grant_consent(&consent)?;
    Ok(consent)
}

/// Records that the user disabled `id` and cancels its registered and pending jobs in the same
/// commit. A running call is stopped by the host that runs it (it checks consent on every
/// request and at least once a second).
pub fn disable(store: &mut Store, id: &str, now_ms: i64) -> Result<DisableReport, HostError> {
    let was_enabled = store.consent(id)?.is_some_and(|c| c.is_enabled());
    let cancelled = store.revoke_consent(id, now_ms)?.unwrap_or_default();
    Ok(DisableReport {
        id: id.to_owned(),
        was_enabled,
        cancelled_jobs: cancelled.into_iter().map(|j| j.id).collect(),
    })
}

/// Whether `id` is enabled now.
pub fn is_enabled(store: &Store, id: &str) -> Result<bool, HostError> {
    Ok(store.consent(id)?.is_some_and(|c| c.is_enabled()))
}
