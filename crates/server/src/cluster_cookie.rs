//! Where a clustered node gets its cookie, the secret its inter-node connections prove
//! (`cluster::handshake`). As RabbitMQ's Erlang cookie, first match wins:
//!
//! 1. `warren.cluster_cookie` (the value itself; for tests and containers);
//! 2. `$RABBITMQ_ERLANG_COOKIE` (deprecated in RabbitMQ, still read there; empty = unset);
//! 3. the file `warren.cluster_cookie_file`, by default `$HOME/.erlang.cookie`. The default
//!    file is created when missing (20 random uppercase letters, mode 0400, as Erlang does).
//!
//! A cookie file that group or others may access is refused (Erlang refuses it too: anyone
//! who reads it can join the cluster and change users and permissions), and so is an empty
//! cookie. A node without clustering reads none of this.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::Config;

/// The environment variable RabbitMQ reads a cookie from.
pub(crate) const COOKIE_ENV: &str = "RABBITMQ_ERLANG_COOKIE";
/// The default cookie file's name in `$HOME` (RabbitMQ's for a non-package install).
pub(crate) const COOKIE_FILE_NAME: &str = ".erlang.cookie";
/// Letters in a created cookie (Erlang's length).
const CREATED_COOKIE_LETTERS: usize = 20;
/// A cookie file's first line is the cookie; more than this is not a cookie file.
const COOKIE_FILE_MAX_BYTES: u64 = 64 * 1024;

/// Where the cookie came from, for the startup log (which never shows the cookie).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieSource {
    ConfigKey,
    Env,
    File(PathBuf),
    /// The default file, created by this start.
    Created(PathBuf),
}

impl std::fmt::Display for CookieSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CookieSource::ConfigKey => write!(f, "warren.cluster_cookie"),
            CookieSource::Env => write!(f, "${COOKIE_ENV}"),
            CookieSource::File(p) => write!(f, "{}", p.display()),
            CookieSource::Created(p) => write!(f, "{} (created)", p.display()),
        }
    }
}

/// The cookie as this process's environment gives it: [`resolve`] with
/// `$RABBITMQ_ERLANG_COOKIE` and `$HOME`.
pub fn from_environment(config: &Config) -> Result<(cluster::Cookie, CookieSource), String> {
    let env = std::env::var(COOKIE_ENV).ok();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    resolve(config, env.as_deref(), home.as_deref())
}

/// The cookie for `config`, given the environment variable's value and the home directory.
pub(crate) fn resolve(
    config: &Config,
    env: Option<&str>,
    home: Option<&Path>,
) -> Result<(cluster::Cookie, CookieSource), String> {
    if let Some(c) = &config.cluster_cookie {
        let cookie = cluster::Cookie::new(c).ok_or("warren.cluster_cookie is empty")?;
        return Ok((cookie, CookieSource::ConfigKey));
    }
    if let Some(c) = env.and_then(cluster::Cookie::new) {
        return Ok((c, CookieSource::Env));
    }
    let (path, default) = match (&config.cluster_cookie_file, home) {
        (Some(p), _) => (p.clone(), false),
        (None, Some(home)) => (home.join(COOKIE_FILE_NAME), true),
        (None, None) => {
            return Err(format!(
                "no cluster cookie: set warren.cluster_cookie or warren.cluster_cookie_file, or ${COOKIE_ENV}, \
                 or $HOME (for $HOME/{COOKIE_FILE_NAME})"
            ));
        }
    };
    let created = default && create_if_missing(&path)?;
    let cookie = read(&path)?;
    let source = if created { CookieSource::Created(path) } else { CookieSource::File(path) };
    Ok((cookie, source))
}

/// Read a cookie file: owner-only access, its first line without trailing blanks, not empty.
fn read(path: &Path) -> Result<cluster::Cookie, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cluster cookie file {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("cluster cookie file {shown} is not a regular file"));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "cluster cookie file {shown} must be accessible by its owner only (its mode is {mode:04o}): \
             chmod 400 {shown}"
        ));
    }
    if meta.len() > COOKIE_FILE_MAX_BYTES {
        return Err(format!("cluster cookie file {shown} is larger than {COOKIE_FILE_MAX_BYTES} bytes"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("reading cluster cookie file {shown}: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("cluster cookie file {shown} is not UTF-8 text"))?;
    let line = text.lines().next().unwrap_or("").trim_end();
    cluster::Cookie::new(line).ok_or_else(|| format!("cluster cookie file {shown} is empty"))
}

/// Create the default cookie file unless it exists; whether this call created it.
///
/// Written to a temporary file first and linked into place, so a node starting at the
/// same time under the same `$HOME` reads either no file or a whole one (and the link of
/// the slower one fails, leaving the first cookie).
fn create_if_missing(path: &Path) -> Result<bool, String> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cluster cookie file {shown}: {e}")),
    }
    let tmp = path.with_file_name(format!("{COOKIE_FILE_NAME}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(&tmp)?;
        f.write_all(random_cookie().as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            tracing::info!("created the cluster cookie file {shown} (random, mode 0400)");
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(format!("creating cluster cookie file {shown}: {e}")),
    }
}

/// [`CREATED_COOKIE_LETTERS`] uniformly random uppercase letters from the OS's source.
fn random_cookie() -> String {
    let mut out = String::with_capacity(CREATED_COOKIE_LETTERS);
    let mut bytes = [0u8; 64];
    while out.len() < CREATED_COOKIE_LETTERS {
        getrandom::fill(&mut bytes).expect("the OS random source failed while making a cluster cookie");
        // 234 = 9 × 26: taking only bytes below it keeps every letter equally likely.
        for b in bytes.iter().filter(|b| **b < 234).take(CREATED_COOKIE_LETTERS - out.len()) {
            out.push(char::from(b'A' + b % 26));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn source(config: &Config, env: Option<&str>, home: Option<&Path>) -> Result<CookieSource, String> {
        resolve(config, env, home).map(|(_, s)| s)
    }

    #[test]
    fn the_config_key_then_the_environment_then_the_file() {
        let home = tempfile::tempdir().unwrap();
        let keyed = Config { cluster_cookie: Some("KEY".into()), ..Config::default() };
        assert_eq!(source(&keyed, Some("ENV"), Some(home.path())), Ok(CookieSource::ConfigKey));
        assert_eq!(source(&Config::default(), Some("ENV"), Some(home.path())), Ok(CookieSource::Env));
        // An empty variable counts as unset.
        let file = home.path().join(COOKIE_FILE_NAME);
        assert_eq!(source(&Config::default(), Some(""), Some(home.path())), Ok(CookieSource::Created(file.clone())));
        let empty = Config { cluster_cookie: Some(String::new()), ..Config::default() };
        assert!(source(&empty, None, Some(home.path())).unwrap_err().contains("empty"));
    }

    #[test]
    fn the_default_file_is_created_once_owner_only_and_then_read() {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join(COOKIE_FILE_NAME);
        assert_eq!(source(&Config::default(), None, Some(home.path())), Ok(CookieSource::Created(file.clone())));
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o400);
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.len(), CREATED_COOKIE_LETTERS);
        assert!(text.bytes().all(|b| b.is_ascii_uppercase()), "{text}");
        assert_eq!(source(&Config::default(), None, Some(home.path())), Ok(CookieSource::File(file.clone())));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text, "not created again");
        assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 1, "no temporary file left");
        assert!(source(&Config::default(), None, None).unwrap_err().contains("no cluster cookie"));
    }

    #[test]
    fn a_configured_file_is_read_not_created_and_must_be_owner_only_and_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cookie");
        let config = Config { cluster_cookie_file: Some(file.clone()), ..Config::default() };
        let e = source(&config, None, Some(dir.path())).unwrap_err();
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(!file.exists());
        std::fs::write(&file, "SECRET  \nignored\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = source(&config, None, None).unwrap_err();
        assert!(e.contains(&file.display().to_string()) && e.contains("owner only") && e.contains("0644"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(source(&config, None, None), Ok(CookieSource::File(file.clone())));
        std::fs::write(&file, "  \n").unwrap();
        assert!(source(&config, None, None).unwrap_err().contains("is empty"));
    }

    #[test]
    fn created_cookies_differ() {
        assert_ne!(random_cookie(), random_cookie());
    }
}
