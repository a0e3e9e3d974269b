//! Runs the real `herald` binary on an ephemeral port.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SECRET: &str = "bin-test-secret-0123456789";
pub const API_KEY: &str = "bin-test-api-key";

/// An HTTP client for the tests. reqwest shares the server crate's TLS
/// build, which has no crypto provider until one is installed.
pub fn http() -> reqwest::Client {
    http_builder().build().expect("http client")
}

/// A builder for an HTTP client, with the crypto provider installed.
pub fn http_builder() -> reqwest::ClientBuilder {
    herald_server::outbound::install_crypto_provider();
    reqwest::Client::builder()
}

/// A `herald` command with a clean environment (no inherited `HERALD_*`).
pub fn herald(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.current_dir(cwd);
    without_herald_env(&mut cmd);
    cmd
}

fn without_herald_env(cmd: &mut Command) {
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") || key == "WEBSOCKET_PORT" {
            cmd.env_remove(key);
        }
    }
}

/// A running server process.
pub struct Proc {
    pub child: Child,
    pub origin: String,
    pub stderr_path: std::path::PathBuf,
}

impl Proc {
    /// Starts `herald serve <args>` in `cwd` and waits for its listening line.
    pub fn start(cwd: &Path, args: &[&str]) -> Self {
        let mut cmd = herald(cwd);
        cmd.arg("serve").args(args);
        Self::spawn(cmd, cwd)
    }

    /// As [`Proc::start`], with the open-file limit (soft and hard) set to
    /// `nofile` by the shell that execs it.
    pub fn start_with_nofile(cwd: &Path, args: &[&str], nofile: u32) -> Self {
        let mut cmd = Command::new("sh");
        cmd.current_dir(cwd)
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$@\""))
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .args(args);
        without_herald_env(&mut cmd);
        Self::spawn(cmd, cwd)
    }

    /// Starts `cmd` (a `herald serve`, perhaps wrapped) and waits for its
    /// listening line.
    pub fn start_command(cwd: &Path, cmd: Command) -> Self {
        Self::spawn(cmd, cwd)
    }

    fn spawn(mut cmd: Command, cwd: &Path) -> Self {
        let stderr_path = cwd.join(format!("stderr-{}.log", rand_suffix()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("herald starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(origin) = line.strip_prefix("herald listening on ") {
                    let _ = tx.send(origin.to_owned());
                }
            }
        });
        let origin = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(o) => o,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "no listening line; stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        Self {
            child,
            origin,
            stderr_path,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("{}/ws", self.origin.replace("http://", "ws://"))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "herald did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The server's `/metrics` text.
pub async fn scrape(http: &reqwest::Client, origin: &str) -> String {
    http.get(format!("{origin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// One sample of `text` (a `/metrics` scrape); its absence fails the test.
pub fn metric_in(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("/metrics has no {name}"))
}

/// One gauge or counter from `/metrics`; its absence fails the test.
pub async fn metric(http: &reqwest::Client, origin: &str, name: &str) -> f64 {
    metric_in(&scrape(http, origin).await, name)
}

/// A config file with known secrets, an embedded store in `dir/data`.
pub fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("herald.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\n{extra}\n[auth]\nhmac_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\nallow_anonymous = true\n[engine]\nkind = \"embedded\"\npath = \"{}\"\n",
        dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A client token for `user`, valid an hour, signed with the tests' secret.
pub fn user_token(user: &str) -> String {
    let claims = herald_server::auth::Claims {
        sub: user.into(),
        exp: Some(herald_server::auth::unix_now() + 3600),
        iat: None,
        role: None,
        channels: None,
    };
    herald_server::auth::sign_hs256(SECRET, &claims).unwrap()
}

/// A masked client frame (RFC 6455 §5.2), for tests that speak raw WebSocket.
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}
