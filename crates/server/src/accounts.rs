//! Users, their device tokens and quotas, as a library: what `ferry-server user …` and
//! `ferry-server token …` do, on the data directory's database (a running server sees each
//! change from its next request).
//!
//! Every token belongs to one user; a token made without a user belongs to the implicit user
//! `default` (as every token, upload and object from before accounts does), so one-user setups
//! and the embedded server never name one.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::meta::{DEFAULT_USER_NAME, Meta, TokenRow, UserRow};
use crate::{DEFAULT_DATA_MODE, StartError, ensure_data_dir, uploads};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("metadata database: {0}")]
    Meta(#[from] sqlx::Error),
    #[error("no user named {0:?} (create it with `ferry-server user create {0}`)")]
    NoSuchUser(String),
    #[error("a user named {0:?} exists already")]
    UserExists(String),
    #[error("{0:?} is not a user name: 1 to 64 letters, digits, `.`, `_` or `-`")]
    BadUserName(String),
    #[error("no token named or with the id {0:?} (see `ferry-server token list`)")]
    NoSuchToken(String),
    #[error(
        "{name:?} names {} tokens ({}): revoke one by its id, or name its user with --user",
        ids.len(),
        ids.join(", ")
    )]
    AmbiguousToken { name: String, ids: Vec<String> },
}

/// A new token and the SHA-256 hex that is all the database keeps of it.
pub fn new_token() -> (String, String) {
    let token = format!(
        "ferry_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let hash = Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (token, hash)
}

fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The accounts of one data directory.
#[derive(Debug)]
pub struct Accounts {
    meta: Meta,
}

impl Accounts {
    /// Opens (and migrates) the data directory's database. A missing directory is created
    /// private (`0700`); an existing one keeps its mode (`serve` sets it).
    pub async fn open(data_dir: &Path) -> Result<Accounts, AccountError> {
        Accounts::connect(data_dir, None).await
    }

    /// [`Accounts::open`] on the metadata database `database` (`sqlite:PATH` or
    /// `postgres://…`, see [`crate::Config::database`]); `None`: the data directory's.
    pub async fn connect(
        data_dir: &Path,
        database: Option<&str>,
    ) -> Result<Accounts, AccountError> {
        let database = crate::backend::database_url(data_dir, database)?;
        if !data_dir.exists() {
            ensure_data_dir(data_dir, DEFAULT_DATA_MODE)
                .map_err(|e| StartError::DataDir(data_dir.into(), e))?;
        }
        let meta = database.open().await?;
        Ok(Accounts { meta })
    }

    pub async fn close(self) {
        self.meta.close().await;
    }

    /// A user by name, or [`AccountError::NoSuchUser`].
    pub async fn user(&self, name: &str) -> Result<UserRow, AccountError> {
        self.meta
            .user_by_name(name)
            .await?
            .ok_or_else(|| AccountError::NoSuchUser(name.into()))
    }

    /// Creates a user; `quota_bytes` `None` is unlimited.
    pub async fn create_user(
        &self,
        name: &str,
        quota_bytes: Option<u64>,
    ) -> Result<UserRow, AccountError> {
        if !valid_user_name(name) {
            return Err(AccountError::BadUserName(name.into()));
        }
        if self.meta.user_by_name(name).await?.is_some() {
            return Err(AccountError::UserExists(name.into()));
        }
        match self
            .meta
            .create_user(name, quota_bytes, uploads::now_unix_ms())
            .await
        {
            Ok(u) => Ok(u),
            // Created by another process in between.
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                Err(AccountError::UserExists(name.into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<UserRow>, AccountError> {
        Ok(self.meta.users().await?)
    }

    /// Sets a user's quota (`None`: unlimited). Objects already stored stay when a quota goes
    /// below what the user holds; new ones are refused until it fits.
    pub async fn set_quota(
        &self,
        name: &str,
        quota_bytes: Option<u64>,
    ) -> Result<UserRow, AccountError> {
        if !self.meta.set_quota(name, quota_bytes).await? {
            return Err(AccountError::NoSuchUser(name.into()));
        }
        self.user(name).await
    }

    /// Creates a device token for `user` (the default user when `None`) and returns it; only
    /// its SHA-256 is stored, so the caller must show it now or never.
    pub async fn create_token(
        &self,
        user: Option<&str>,
        device: &str,
    ) -> Result<String, AccountError> {
        let user = self.user(user.unwrap_or(DEFAULT_USER_NAME)).await?;
        let (token, hash) = new_token();
        self.meta
            .add_token(user.id, device, &hash, uploads::now_unix_ms())
            .await?;
        Ok(token)
    }

    /// Every token (of `user`, when given), by user name and age.
    pub async fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenRow>, AccountError> {
        let user_id = match user {
            Some(name) => Some(self.user(name).await?.id),
            None => None,
        };
        Ok(self.meta.tokens(user_id).await?)
    }

    /// Revokes the one token `name_or_id` names: its id (as `token list` shows it) or its
    /// device name (of `user`, when given). A name several tokens share is refused with their
    /// ids. From the commit on, a server answers the token 401.
    pub async fn revoke_token(
        &self,
        name_or_id: &str,
        user: Option<&str>,
    ) -> Result<TokenRow, AccountError> {
        let tokens = self.tokens(user).await?;
        let by_id: Vec<&TokenRow> = tokens
            .iter()
            .filter(|t| t.id() == name_or_id || t.sha256_hex == name_or_id)
            .collect();
        let matches = if by_id.is_empty() {
            tokens.iter().filter(|t| t.name == name_or_id).collect()
        } else {
            by_id
        };
        let token = match matches.as_slice() {
            [] => return Err(AccountError::NoSuchToken(name_or_id.into())),
            [one] => (*one).clone(),
            many => {
                return Err(AccountError::AmbiguousToken {
                    name: name_or_id.into(),
                    ids: many
                        .iter()
                        .map(|t| format!("{} of {}", t.id(), t.user_name))
                        .collect(),
                });
            }
        };
        if !self.meta.revoke_token(&token.sha256_hex).await? {
            // Revoked by another process in between: as good as done.
            tracing::debug!(token = token.id(), "token was already gone");
        }
        Ok(token)
    }
}
