//! Where the metadata and the finished objects live: the URLs `--database` and `--store` take,
//! parsed into types with an error that says what is wrong, and opening them. A remote store is
//! probed before the server listens, so a wrong bucket, key or endpoint fails the start with a
//! message naming the store instead of failing the first upload that completes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientConfigKey, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig,
};

use crate::StartError;
use crate::blobs::Blobs;
use crate::meta::Meta;

/// A `--database` or `--store` value that names nothing this server can use.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {reason}")]
pub struct UrlError {
    /// The URL as given, its password replaced by `***`.
    pub url: String,
    pub reason: String,
}

/// The metadata database. Shown (`Display` and `Debug` alike) without its password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite:PATH` (or `sqlite://PATH`): one file, created when missing.
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`, handed to the driver whole.
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<DatabaseUrl, UrlError> {
        let bad = |reason: &str| UrlError {
            url: redact_url(url),
            reason: reason.into(),
        };
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(bad("names no file: write sqlite:PATH"));
            }
            // Options would silently become part of the file name.
            if path.contains('?') {
                return Err(bad("takes no options: write sqlite:PATH"));
            }
            // Each pooled connection would get a database of its own, and all of it is lost
            // at exit.
            if path == ":memory:" || path.starts_with("file::memory:") {
                return Err(bad("an in-memory database cannot hold a server's metadata"));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        for scheme in ["postgres://", "postgresql://"] {
            if let Some(rest) = url.strip_prefix(scheme) {
                if rest.is_empty() {
                    return Err(bad("names no server: write postgres://USER@HOST/DATABASE"));
                }
                return Ok(DatabaseUrl::Postgres(url.to_string()));
            }
        }
        Err(match scheme_of(url) {
            Some(scheme) => bad(&format!(
                "{scheme}: is not a supported database: use sqlite:PATH or postgres://USER@HOST/DATABASE"
            )),
            None => bad("is not a database URL: use sqlite:PATH or postgres://USER@HOST/DATABASE"),
        })
    }

    /// Opens (and migrates) the database. The error names the URL without its password, and
    /// the driver's message has any copy of the password cut out too.
    pub async fn open(&self) -> Result<Meta, StartError> {
        let opened = match self {
            // Exactly what a server without `--database` has always done.
            DatabaseUrl::Sqlite(path) => Meta::open(Some(path)).await,
            DatabaseUrl::Postgres(url) => Meta::open_postgres(url).await,
        };
        opened.map_err(|e| {
            let detail = match self {
                DatabaseUrl::Sqlite(_) => e.to_string(),
                DatabaseUrl::Postgres(url) => scrub(&e.to_string(), url),
            };
            StartError::Database {
                url: self.to_string(),
                detail,
            }
        })
    }
}

/// The URL with its password shown as `***`: safe to log.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            DatabaseUrl::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            DatabaseUrl::Postgres(url) => {
                f.debug_tuple("Postgres").field(&redact_url(url)).finish()
            }
        }
    }
}

/// Where finished objects go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `file:DIR`: objects as files under `DIR/objects/`, hard-linked from the partial file
    /// when `DIR` is on the data directory's file system.
    File(PathBuf),
    /// `s3://BUCKET[/PREFIX]`: an S3-compatible bucket, configured by the `AWS_*` variables.
    S3 {
        bucket: String,
        prefix: Option<String>,
    },
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, UrlError> {
        let bad = |reason: &str| UrlError {
            url: redact_url(url),
            reason: reason.into(),
        };
        if let Some(rest) = url.strip_prefix("file:") {
            // `file:///srv/objects` and `file:/srv/objects` name the same folder.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(bad("names no folder: write file:DIR"));
            }
            return Ok(StoreUrl::File(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            if rest.contains(['?', '#']) {
                return Err(bad(
                    "takes no options: the endpoint, region and keys come from AWS_ENDPOINT_URL, \
                     AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                ));
            }
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("names no bucket: write s3://BUCKET[/PREFIX]"));
            }
            if bucket.contains(['@', ':']) {
                return Err(bad(
                    "names no bucket (keys never go into the URL: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY)",
                ));
            }
            if !bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return Err(bad(
                    "the bucket name may hold only letters, digits, `.`, `-` and `_`",
                ));
            }
            let prefix = prefix.trim_matches('/');
            let prefix = if prefix.is_empty() {
                None
            } else {
                // `a//b`, `.` or `..` would name keys other than the ones written.
                StorePath::parse(prefix).map_err(|e| bad(&format!("bad prefix: {e}")))?;
                Some(prefix.to_string())
            };
            return Ok(StoreUrl::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        Err(match scheme_of(url) {
            Some(scheme) => bad(&format!(
                "{scheme}: is not a supported store: use file:DIR or s3://BUCKET[/PREFIX]"
            )),
            None => bad("is not a store URL: use file:DIR or s3://BUCKET[/PREFIX]"),
        })
    }

    /// Opens the store. A local folder is created when missing; an S3 store is probed (listed,
    /// a small object written, read back and deleted) within [`PROBE_TIME_LIMIT`], so that a missing
    /// bucket, refused keys or an endpoint nobody answers fail here. `aws_env` holds the
    /// `AWS_*` settings to use; `None`: this process's environment.
    pub async fn open(
        &self,
        aws_env: Option<&BTreeMap<String, String>>,
    ) -> Result<Blobs, StartError> {
        let url = self.to_string();
        match self {
            StoreUrl::File(dir) => Blobs::local(dir).map_err(|e| StartError::Store {
                url,
                detail: e.to_string(),
            }),
            StoreUrl::S3 { bucket, prefix } => {
                let builder = s3_builder(bucket, aws_env);
                let build = |b: AmazonS3Builder| {
                    b.build().map(Arc::new).map_err(|e| StartError::Store {
                        url: url.clone(),
                        detail: e.to_string(),
                    })
                };
                let probe_store =
                    with_prefix(build(probe_settings(builder.clone()))?, prefix.as_deref());
                let s3 = build(builder)?;
                let store = with_prefix(s3.clone(), prefix.as_deref());
                match tokio::time::timeout(PROBE_TIME_LIMIT, probe(&probe_store)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        let mut e = classify(url, bucket, e);
                        if !has_keys(aws_env)
                            && let StartError::Store { detail, .. } = &mut e
                        {
                            // Without keys, object_store asks the cloud's instance metadata
                            // service for some, which off the cloud fails obscurely.
                            detail.push_str(
                                " (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set)",
                            );
                        }
                        return Err(e);
                    }
                    Err(_) => {
                        return Err(StartError::StoreUnreachable {
                            url,
                            detail: format!("no answer within {} s", PROBE_TIME_LIMIT.as_secs()),
                        });
                    }
                }
                Ok(Blobs::remote(store, s3, prefix.clone()))
            }
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::File(dir) => write!(f, "file:{}", dir.display()),
            StoreUrl::S3 {
                bucket,
                prefix: None,
            } => write!(f, "s3://{bucket}"),
            StoreUrl::S3 {
                bucket,
                prefix: Some(p),
            } => write!(f, "s3://{bucket}/{p}"),
        }
    }
}

/// The longest a start waits for an S3 store to prove itself.
pub const PROBE_TIME_LIMIT: Duration = Duration::from_secs(10);

/// An S3 store's client: object_store's settings except for the timeouts, then the `AWS_*`
/// settings over them (an operator's `AWS_TIMEOUT` or `AWS_READ_TIMEOUT` wins).
///
/// object_store's default is a 30 s limit on each whole request, retried for at most 3 minutes:
/// a download of a large object to a slow client (which reads the S3 response only as fast as
/// the client takes it) would be cut after a few minutes. A limit on each wait for the store
/// instead: connecting (5 s) and each read, or the whole wait for an answer to a part's upload
/// (120 s: a 16 MiB part at 140 kB/s).
fn s3_builder(bucket: &str, aws_env: Option<&BTreeMap<String, String>>) -> AmazonS3Builder {
    let client = ClientOptions::new()
        .with_timeout_disabled()
        .with_connect_timeout(Duration::from_secs(5))
        .with_read_timeout(Duration::from_secs(120));
    let mut builder = AmazonS3Builder::new().with_client_options(client);
    // What `AmazonS3Builder::from_env` does, over the client options above rather than
    // in place of them.
    let settings: Vec<(String, String)> = match aws_env {
        Some(vars) => vars.clone().into_iter().collect(),
        None => std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect(),
    };
    for (key, value) in settings {
        if !key.starts_with("AWS_") {
            continue;
        }
        // Variables object_store does not know (AWS_PROFILE, …) are not for it.
        if let Ok(key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            builder = builder.with_config(key, value);
        }
    }
    // The URL's bucket, whatever AWS_BUCKET says.
    builder.with_bucket_name(bucket)
}

/// True when the settings name static keys (else object_store looks for others: web identity,
/// container or instance credentials).
fn has_keys(aws_env: Option<&BTreeMap<String, String>>) -> bool {
    match aws_env {
        Some(vars) => vars.contains_key("AWS_ACCESS_KEY_ID"),
        None => std::env::var_os("AWS_ACCESS_KEY_ID").is_some(),
    }
}

/// The probe's client gives up fast: one retry, short waits. The store that serves keeps
/// object_store's retries (a store that hiccups mid-upload should not fail it).
fn probe_settings(builder: AmazonS3Builder) -> AmazonS3Builder {
    builder
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(500),
                base: 2.0,
            },
            max_retries: 1,
            retry_timeout: Duration::from_secs(5),
        })
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            "3s",
        )
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "5s")
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: Option<&str>) -> Arc<dyn ObjectStore> {
    match prefix {
        Some(p) => Arc::new(object_store::prefix::PrefixStore::new(store, p)),
        None => store,
    }
}

/// Lists `ferry-probe/`, then writes, reads back and deletes `ferry-probe/<random>`: proves the
/// endpoint answers, the keys are accepted, the bucket exists and the server may list, write
/// and read objects in it.
///
/// The listing comes first because it is what tells a missing bucket apart (404 NoSuchBucket)
/// without creating it: SeaweedFS creates a missing bucket on the first write with an admin's
/// keys. And the server needs the listing permission anyway: without it S3 answers a HEAD of a
/// missing object (how a commit checks for an existing object) 403 instead of 404.
async fn probe(store: &Arc<dyn ObjectStore>) -> Result<(), (Step, object_store::Error)> {
    const BODY: &[u8] = b"ferry-server start probe";
    let dir = StorePath::from("ferry-probe");
    if let Some(Err(e)) = futures_util::StreamExt::next(&mut store.list(Some(&dir))).await {
        return Err((Step::List, e));
    }
    let path = dir.clone().join(uuid::Uuid::new_v4().simple().to_string());
    store
        .put(&path, PutPayload::from_static(BODY))
        .await
        .map_err(|e| (Step::Write, e))?;
    let read = match store.get(&path).await {
        Ok(r) => r.bytes().await,
        Err(e) => Err(e),
    };
    // Deleted whatever the read said; the server itself never deletes objects, so a store that
    // refuses only this costs a stray probe object, not the start.
    if let Err(e) = store.delete(&path).await {
        tracing::warn!(object = %path, error = %e, "cannot delete the start probe object");
    }
    let read = read.map_err(|e| (Step::Read, e))?;
    if read.as_ref() != BODY {
        return Err((
            Step::Read,
            object_store::Error::Generic {
                store: "S3",
                source: format!(
                    "the probe object read back {} bytes that differ from the {} written",
                    read.len(),
                    BODY.len()
                )
                .into(),
            },
        ));
    }
    Ok(())
}

/// The probe's steps, for an error that says which one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    List,
    Write,
    Read,
}

/// Turns a failed probe into the start error that says what to fix. object_store types a 404
/// or 403 of a single object (`NotFound`, `PermissionDenied`) but not of a listing, so S3's
/// error code in the answer (`<Code>NoSuchBucket</Code>`) is read too.
fn classify(url: String, bucket: &str, (step, e): (Step, object_store::Error)) -> StartError {
    let detail = match step {
        Step::List => format!("listing objects: {e}"),
        Step::Write => format!("writing a probe object: {e}"),
        Step::Read => format!("reading the probe object back: {e}"),
    };
    let code = s3_error_code(&detail);
    let missing = matches!(code, Some("NoSuchBucket"))
        // Before anything was written, a 404 can only mean the bucket.
        || step != Step::Read && matches!(e, object_store::Error::NotFound { .. });
    let denied = matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || matches!(
        code,
        Some(
            "AccessDenied"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "InvalidToken"
                | "ExpiredToken"
                | "AuthorizationHeaderMalformed"
        )
    );
    if missing {
        StartError::StoreBucketMissing {
            url,
            bucket: bucket.into(),
            detail,
        }
    } else if denied {
        StartError::StoreDenied { url, detail }
    } else if unreachable(&e) {
        StartError::StoreUnreachable { url, detail }
    } else {
        StartError::Store { url, detail }
    }
}

/// The `Code` of an S3 error answer quoted in `text`.
fn s3_error_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

/// Whether `e` says the store could not be reached in time (connect failure or timeout),
/// as opposed to a refusal: the request may be repeated.
pub(crate) fn unreachable(e: &object_store::Error) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<HttpError>() {
            return matches!(h.kind(), HttpErrorKind::Connect | HttpErrorKind::Timeout);
        }
        source = s.source();
    }
    false
}

/// `postgres` in `postgres://…`, when `url` starts with a scheme at all.
fn scheme_of(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut bytes = scheme.bytes();
    let first = bytes.next()?;
    (first.is_ascii_alphabetic()
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
    .then_some(scheme)
}

/// `url` with the password of its user part and any `…password=` query value shown as `***`.
/// Errs on the side of hiding: everything between the user name and the last `@` goes.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL as expected (`postgres:/u:pw@h`, `s3:key:secret@bucket`): whatever stands
        // between the first `:` and the last `@` may be a secret.
        return match (url.split_once(':'), url.rsplit_once('@')) {
            (Some((scheme, _)), Some((_, host))) => format!("{scheme}:***@{host}"),
            _ => url.to_string(),
        };
    };
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => rest.to_string(),
        },
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("password") => {
                        format!("{k}=***")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => rest,
    };
    format!("{scheme}://{rest}")
}

/// `text` with every secret of `url` (its password as written and percent-decoded, and any
/// `…password=` query value) replaced by `***`: a driver may quote the URL it was given.
fn scrub(text: &str, url: &str) -> String {
    let mut secrets = Vec::new();
    if let Some((_, rest)) = url.split_once("://") {
        if let Some((userinfo, _)) = rest.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            secrets.push(password.to_string());
            secrets.push(percent_decode(password));
        }
        if let Some((_, query)) = rest.split_once('?') {
            for pair in query.split('&') {
                if let Some((k, v)) = pair.split_once('=')
                    && k.to_ascii_lowercase().contains("password")
                {
                    secrets.push(v.to_string());
                    secrets.push(percent_decode(v));
                }
            }
        }
    }
    // Longest first, so a secret that contains another is cut whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut text = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(s.as_str(), "***");
    }
    text
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The database a data directory uses: `database` when given, else its `meta.db`.
pub fn database_url(data_dir: &Path, database: Option<&str>) -> Result<DatabaseUrl, StartError> {
    match database {
        Some(url) => DatabaseUrl::parse(url).map_err(StartError::DatabaseUrl),
        None => Ok(DatabaseUrl::Sqlite(data_dir.join("meta.db"))),
    }
}

/// The store a data directory uses: `store` when given, else its `blobs` folder.
pub fn store_url(data_dir: &Path, store: Option<&str>) -> Result<StoreUrl, StartError> {
    match store {
        Some(url) => StoreUrl::parse(url).map_err(StartError::StoreUrl),
        None => Ok(StoreUrl::File(data_dir.join("blobs"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:/srv/meta.db").unwrap(),
            DatabaseUrl::Sqlite("/srv/meta.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///srv/meta.db").unwrap(),
            DatabaseUrl::Sqlite("/srv/meta.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:meta.db").unwrap(),
            DatabaseUrl::Sqlite("meta.db".into())
        );
        for url in ["postgres://ferry@db/ferry", "postgresql://db:5433/ferry"] {
            assert_eq!(
                DatabaseUrl::parse(url).unwrap(),
                DatabaseUrl::Postgres(url.into())
            );
        }
        for (url, says) in [
            ("mysql://u:pw@db/x", "mysql: is not a supported database"),
            ("sqlite:", "names no file"),
            ("sqlite:x.db?mode=ro", "takes no options"),
            ("sqlite::memory:", "in-memory"),
            ("postgres://", "names no server"),
            ("/srv/meta.db", "is not a database URL"),
            ("", "is not a database URL"),
        ] {
            let e = DatabaseUrl::parse(url).unwrap_err();
            assert!(e.reason.contains(says), "{url}: {e}");
            assert!(!e.to_string().contains("pw"), "{e}");
        }
    }

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreUrl::parse("file:/srv/objects").unwrap(),
            StoreUrl::File("/srv/objects".into())
        );
        assert_eq!(
            StoreUrl::parse("file:///srv/objects").unwrap(),
            StoreUrl::File("/srv/objects".into())
        );
        assert_eq!(
            StoreUrl::parse("s3://ferry").unwrap(),
            StoreUrl::S3 {
                bucket: "ferry".into(),
                prefix: None
            }
        );
        let s = StoreUrl::parse("s3://ferry/a/b/").unwrap();
        assert_eq!(
            s,
            StoreUrl::S3 {
                bucket: "ferry".into(),
                prefix: Some("a/b".into())
            }
        );
        assert_eq!(s.to_string(), "s3://ferry/a/b");
        for (url, says) in [
            ("file:", "names no folder"),
            ("s3://", "names no bucket"),
            ("s3:///x", "names no bucket"),
            ("s3://key:secret@bucket", "keys never go into the URL"),
            ("s3://b?endpoint=x", "takes no options"),
            ("s3://b/a//c", "bad prefix"),
            ("s3://b/../c", "bad prefix"),
            ("s3://b c", "only letters"),
            ("gs://bucket", "gs: is not a supported store"),
            ("/srv/objects", "is not a store URL"),
        ] {
            let e = StoreUrl::parse(url).unwrap_err();
            assert!(e.reason.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://ferry:s3cr%40t@db:5432/ferry?sslmode=require"),
            "postgres://ferry:***@db:5432/ferry?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/ferry?user=a&password=pw"),
            "postgres://db/ferry?user=a&password=***"
        );
        assert_eq!(redact_url("postgres://ferry@db/x"), "postgres://ferry@db/x");
        // A password with an unescaped `@` or `/` still goes whole.
        assert_eq!(
            redact_url("postgres://u:p@s/s@db/x"),
            "postgres://u:***@db/x"
        );
        let url = "postgres://ferry:s3cr%40t@db/x?password=other";
        assert_eq!(
            scrub("bad URL s3cr%40t, s3cr@t, other, s3cr", url),
            "bad URL ***, ***, ***, s3cr"
        );
        let parsed = DatabaseUrl::parse(url).unwrap();
        assert_eq!(parsed.to_string(), "postgres://ferry:***@db/x?password=***");
        assert!(!format!("{parsed:?}").contains("s3cr"), "{parsed:?}");
        // Refused URLs are shown redacted too, also when they are not `scheme://` ones.
        for bad in [
            "s3://AKIA:S3CRET@bucket",
            "s3:AKIA:S3CRET@bucket",
            "postgres:/u:S3CRET@db/x",
            "mysql://u:S3CRET@db/x",
        ] {
            let e = StoreUrl::parse(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!e.contains("S3CRET"), "{e}");
            let e = DatabaseUrl::parse(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!e.contains("S3CRET"), "{e}");
        }
    }
}
