//! The admin token (`admin_token`, `admin_token_file`): the bearer token of the `/admin`
//! endpoints on the metrics listener. Kept apart from the other keys because it is a secret:
//! hidden from `Debug`, never printed by `check-config`, read from its file at start and on
//! every reload.

use serde::Deserialize;

use super::{Config, ConfigError};

/// The admin token (`admin_token`): a secret, so its `Debug` form hides it and `check-config`
/// does not print it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<not shown>)")
    }
}

/// Shortest admin token accepted (the endpoints have no rate limit: a short one is guessable).
pub const ADMIN_TOKEN_MIN_LEN: usize = 16;

/// An admin token must fit an `Authorization: Bearer` header and be long enough not to guess.
pub(super) fn check(token: &str, key: &str) -> Result<(), ConfigError> {
    if token.len() < ADMIN_TOKEN_MIN_LEN {
        return Err(ConfigError::Invalid(format!(
            "{key} must be at least {ADMIN_TOKEN_MIN_LEN} characters (e.g. `openssl rand -hex 32`)"
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::Invalid(format!(
            "{key} may only hold visible ASCII characters (no spaces)"
        )));
    }
    Ok(())
}

impl Config {
    /// The admin token in force: `admin_token`, or the content of `admin_token_file` (read now,
    /// surrounding whitespace removed); `None` when neither is set (administration disabled).
    /// [`Config::from_flags`] reads it to validate it; the broker reads it at start and on
    /// every reload.
    pub fn admin_token_value(&self) -> Result<Option<String>, ConfigError> {
        let (token, key) = match (&self.admin_token, &self.admin_token_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "admin_token and admin_token_file are both set: set one".into(),
                ))
            }
            (Some(token), None) => (token.0.clone(), "admin_token"),
            (None, Some(path)) => {
                let bad = |e: std::io::Error| {
                    ConfigError::Invalid(format!("admin_token_file {}: {e}", path.display()))
                };
                let text = std::fs::read_to_string(path).map_err(bad)?;
                let mode = std::fs::metadata(path).map_err(bad)?;
                if std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o077 != 0 {
                    tracing::warn!(
                        admin_token_file = %path.display(),
                        "the admin token file is readable by other users (chmod 600 it)"
                    );
                }
                (text.trim().to_string(), "admin_token_file")
            }
        };
        check(&token, key)?;
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    const TOKEN: &str = "s3cret-token-0123456789";

    fn dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shardmq-admin-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["shardmq"];
        all.extend_from_slice(args);
        Config::from_flags(Flags::parse_from(all))
    }

    #[test]
    fn token_from_key_flag_or_file() {
        let dir = dir("sources");
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("  {TOKEN}\n")).unwrap();
        let config_file = dir.join("broker.toml");
        std::fs::write(&config_file, format!("admin_token = \"{TOKEN}\"\n")).unwrap();
        let config_path = config_file.to_str().unwrap();
        let file_path = token_file.to_str().unwrap();

        assert_eq!(load(&[]).unwrap().admin_token_value().unwrap(), None);
        let config = load(&["--config", config_path]).unwrap();
        assert_eq!(config.admin_token_value().unwrap().as_deref(), Some(TOKEN));
        assert!(!format!("{config:?}").contains(TOKEN), "Debug hides it");
        // check-config says it is set, and never prints it.
        let printed = config.to_toml().unwrap();
        assert!(!printed.contains(TOKEN), "{printed}");
        assert!(printed.contains("# admin_token: set"), "{printed}");

        // The file, whitespace trimmed; a flag for either key replaces the file's.
        let config = load(&["--config", config_path, "--admin-token-file", file_path]).unwrap();
        assert_eq!(config.admin_token, None);
        assert_eq!(config.admin_token_value().unwrap().as_deref(), Some(TOKEN));
        let other = "another-token-9876543210";
        let config = load(&["--admin-token-file", file_path, "--admin-token", other]);
        assert!(matches!(config, Err(ConfigError::Invalid(_))), "both flags");
        let config = load(&["--admin-token", other]).unwrap();
        assert_eq!(config.admin_token_value().unwrap().as_deref(), Some(other));

        // Both keys in one file: refused.
        std::fs::write(
            &config_file,
            format!("admin_token = \"{TOKEN}\"\nadmin_token_file = \"{file_path}\"\n"),
        )
        .unwrap();
        let error = load(&["--config", config_path]).unwrap_err().to_string();
        assert!(error.contains("both set"), "{error}");

        // Too short, spaces, a missing file: refused without echoing the token.
        for bad in ["short", "has a space in it 0123"] {
            let error = load(&["--admin-token", bad]).unwrap_err().to_string();
            assert!(!error.contains(bad), "{error}");
        }
        std::fs::write(&token_file, "tiny\n").unwrap();
        assert!(load(&["--admin-token-file", file_path]).is_err());
        let missing = dir.join("missing");
        let error = load(&["--admin-token-file", missing.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("admin_token_file"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn token_changes_apply_on_reload() {
        let old = Config::default();
        let new = Config {
            admin_token: Some(AdminToken(TOKEN.into())),
            ..Config::default()
        };
        let (applied, restart) = reload_diff(&old, &new);
        assert_eq!(applied, vec!["admin_token".to_string()]);
        assert!(restart.is_empty());
        let new = Config {
            admin_token_file: Some("/etc/shardmq/admin-token".into()),
            ..Config::default()
        };
        assert_eq!(
            reload_diff(&old, &new).0,
            vec!["admin_token_file".to_string()]
        );
    }
}
