//! Dev mode (SPEC §4): generated secrets, printed once and kept in
//! `<engine.path>/dev.env` so `herald token` / `publish` can find them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use herald_server::config::Config;
use herald_server::ids::random_token;
use herald_server::private_fs;

/// Fills in any missing API key and HMAC secret, writes dev.env, and warns.
pub(crate) fn prepare(config: &mut Config) -> Result<()> {
    if config.auth.api_keys.is_empty() {
        config
            .auth
            .api_keys
            .push(format!("dev-{}", random_token(32)));
    }
    if config.auth.hmac_secret.is_none() && config.auth.public_key_file.is_none() {
        config.auth.hmac_secret = Some(random_token(48));
    }
    let dir = &config.engine.path;
    // The directory and dev.env hold the API key and the signing secret:
    // private to this user whatever the umask.
    private_fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("dev.env");
    let mut text = format!("HERALD_AUTH_API_KEYS={}\n", config.auth.api_keys.join(","));
    if let Some(secret) = &config.auth.hmac_secret {
        text.push_str(&format!("HERALD_AUTH_HMAC_SECRET={secret}\n"));
    }
    private_fs::write_secret(&path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "\nherald dev mode: loopback only; anonymous clients allowed; every namespace public;\n\
         `connect` may name a user without a token. Do not expose this server.\n\
         API key:     {}\n\
         HMAC secret: {}\n\
         (also in {})\n",
        config.auth.api_keys[0],
        config
            .auth
            .hmac_secret
            .as_deref()
            .unwrap_or("(public key configured)"),
        path.display()
    );
    tracing::warn!("running in dev mode: do not expose this server");
    Ok(())
}

/// Reads `<dir>/dev.env`, if dev mode wrote one.
pub(crate) fn read_env(dir: &Path) -> Option<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("dev.env")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect(),
    )
}
