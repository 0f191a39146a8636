//! Where qchat keeps its state. `QCHAT_HOME` wins, so tests and people
//! running several identities can keep everything in one folder; otherwise
//! the platform's data directory (never a cache directory: losing a pin or
//! the server key is not harmless).

use std::path::PathBuf;

use anyhow::{anyhow, Result};

/// The folder that holds `certs/` and `known_hosts`.
pub fn home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("QCHAT_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    directories::ProjectDirs::from("", "", "qchat")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| {
            anyhow!("cannot find a home directory; set QCHAT_HOME to the folder qchat should use")
        })
}

/// The server identity's default folder.
pub fn cert_dir() -> Result<PathBuf> {
    Ok(home()?.join("certs"))
}

/// The person's own key (`qchat connect` presents it to servers).
pub fn identity_dir() -> Result<PathBuf> {
    Ok(home()?.join("identity"))
}

/// The client's default pin store.
pub fn known_hosts() -> Result<PathBuf> {
    Ok(home()?.join("known_hosts"))
}

/// The people the user verified (`/verify`, `qchat contacts`).
pub fn contacts() -> Result<PathBuf> {
    Ok(home()?.join("contacts"))
}

/// The folder of per-server resume points (where each conversation left
/// off), so a client restarted by hand catches up.
pub fn resume_dir() -> Result<PathBuf> {
    Ok(home()?.join("resume"))
}

/// The server's default data folder (its room log).
pub fn server_dir() -> Result<PathBuf> {
    Ok(home()?.join("server"))
}
