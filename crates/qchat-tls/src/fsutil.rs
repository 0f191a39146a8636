//! Private-file helpers shared by `identity` and `known_hosts`.
//!
//! Permissions are set when a file or directory is created, never with a
//! chmod afterwards: a chmod leaves a window in which another user can open
//! the file, and an open descriptor keeps working after the chmod.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};

/// Creates `dir` (and missing parents) readable only by the owner.
/// An existing directory is left as it is.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(dir)
}

/// Opens (creating if needed) a file only the owner can access, without
/// truncating it. Used for lock files, whose content is irrelevant.
pub(crate) fn open_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)
}

/// Makes a completed rename durable: without syncing the directory a crash
/// can forget the new directory entry even though the file data is on disk.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// The directory a file lives in, treating a bare file name as `.`.
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Warns when a secret file can be read or written by anyone but its owner.
///
/// Returns `None` when the mode is fine or the file cannot be inspected (a
/// missing file is reported by whoever tries to read it, not here).
pub fn check_private_file_mode(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        let mode = fs::metadata(path).ok()?.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Some(format!(
                "{} is accessible by other users (mode {mode:04o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
        None
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Warns when other users could replace files in `dir`.
pub(crate) fn check_private_dir_mode(dir: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        let mode = fs::metadata(dir).ok()?.mode() & 0o777;
        if mode & 0o022 != 0 {
            return Some(format!(
                "{} is writable by other users (mode {mode:04o}), who could replace its files; run `chmod 700 {}`",
                dir.display(),
                dir.display()
            ));
        }
        None
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn readable_secret_is_reported_with_chmod_hint() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        fs::write(&path, b"x").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let warning = check_private_file_mode(&path).expect("warning");
        assert!(warning.contains("chmod 600"), "{warning}");
        assert!(warning.contains(&path.display().to_string()), "{warning}");
    }

    #[cfg(unix)]
    #[test]
    fn private_dir_is_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b");
        create_private_dir(&path).expect("mkdir");
        let mode = fs::metadata(&path).expect("metadata").mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(check_private_dir_mode(&path).is_none());
    }
}
