//! Modes of the files Herald creates: its data may not be readable by other
//! users, whatever the umask.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::util::Proc;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Under umask 022 (files 0644 by default), a bare `herald serve` (dev mode,
/// embedded store) creates its data directory 0700 and dev.env, herald.db and
/// its -wal and -shm files 0600. Before the fix they were 0755 and 0644.
#[test]
fn data_directory_and_files_are_private_under_umask_022() {
    let dir = tempfile::tempdir().unwrap();
    // `sh` sets the umask, then becomes herald: no unsafe pre_exec needed.
    let mut cmd = Command::new("sh");
    cmd.current_dir(dir.path())
        .arg("-c")
        .arg("umask 022 && exec \"$0\" serve")
        .arg(env!("CARGO_BIN_EXE_herald"));
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") || key == "WEBSOCKET_PORT" {
            cmd.env_remove(key);
        }
    }
    let _server = Proc::start_command(dir.path(), cmd);
    let data = dir.path().join("herald-data");
    // A control file made the ordinary way shows the umask is the permissive one.
    let control = dir.path().join("control");
    let status = Command::new("sh")
        .arg("-c")
        .arg("umask 022 && : > \"$0\"")
        .arg(&control)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(mode(&control), 0o644);
    assert_eq!(mode(&data), 0o700, "data directory");
    for name in ["dev.env", "herald.db", "herald.db-wal", "herald.db-shm"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
}
