//! Files and directories only Herald's own user may read: the data directory
//! (0700), the store and dev mode's `dev.env` (0600). They hold every message,
//! notification and, in dev mode, the API key and signing secret, so they must
//! not follow a permissive process umask (022 makes files 0644).
//!
//! Modes are given at creation (not by a chmod afterwards), so there is no
//! moment in which another user could open a new file; an existing file about
//! to receive a secret is tightened before anything is written to it.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

/// Mode of directories Herald creates for its data.
pub const DIR_MODE: u32 = 0o700;
/// Mode of files Herald creates for its data.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parents with mode 0700. An existing
/// directory is left as it is (the operator may have chosen its mode).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(DIR_MODE);
    builder.create(dir)
}

/// Creates `path` with mode 0600 if it does not exist; an existing file is
/// neither truncated nor changed.
pub fn touch(path: &Path) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    options.mode(FILE_MODE);
    options.open(path).map(drop)
}

/// Writes `contents` to `path`, created with mode 0600. A file that already
/// exists is made 0600 before it is written: it is about to hold a secret.
pub fn write_secret(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(FILE_MODE);
    let mut file: File = options.open(path)?;
    #[cfg(unix)]
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_private_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        let file = dir.join("f");
        touch(&file).unwrap();
        assert_eq!(mode(&file), FILE_MODE);
        let secret = dir.join("s");
        std::fs::write(&secret, "old").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret(&secret, b"new").unwrap();
        assert_eq!(
            mode(&secret),
            FILE_MODE,
            "an existing secret file is tightened"
        );
        assert_eq!(std::fs::read(&secret).unwrap(), b"new");
    }
}
