//! Logins kept per address (like kube contexts), in `contexts.json` under the user's config
//! directory, written with mode 0600 in a 0700 directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Context {
    /// Tenant.
    pub tenant: String,
    /// Client id.
    pub client_id: String,
    /// Client secret (the file is readable by the user only).
    pub client_secret: String,
    /// The last access token (audience `capstan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// When it expires (Unix seconds).
    #[serde(default)]
    pub expires_at: i64,
}

/// Every login, and which address is current.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Contexts {
    /// The current address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Logins by address.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// The config directory: the flag or `CAPSTAN_CONFIG_DIR`, else `$XDG_CONFIG_HOME/capstan`,
/// else `~/.config/capstan`.
pub fn config_dir(flag: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("capstan"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config").join("capstan")),
        None => Err("cannot find a config directory: set CAPSTAN_CONFIG_DIR or HOME".into()),
    }
}

impl Contexts {
    fn path(dir: &Path) -> PathBuf {
        dir.join("contexts.json")
    }

    /// Reads the file (empty when there is none).
    pub fn load(dir: &Path) -> Result<Contexts, String> {
        let path = Contexts::path(dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("{} is not valid: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the file atomically, readable by the user only.
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let err = |e: std::io::Error| format!("cannot write {}: {e}", dir.display());
        std::fs::create_dir_all(dir).map_err(err)?;
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let tmp = dir.join(format!(".contexts.json.{}", std::process::id()));
        write_private(&tmp, text.as_bytes()).map_err(err)?;
        std::fs::rename(&tmp, Contexts::path(dir)).map_err(err)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}
