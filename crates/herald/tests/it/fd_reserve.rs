//! At the open-file limit, the ops paths still answer: one address holding
//! more sockets than the process may open must not make `/health` and
//! `/metrics` time out for everyone else.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::util::*;

/// The process's open-file limit in this test; the server keeps 64 for
/// itself and 32 sockets for the ops paths.
const NOFILE: u32 = 256;

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn ops_paths_answer_while_one_address_holds_every_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    // A per-address cap above the limit, so only the fd reserve stands in
    // the way; silent sockets held for a minute, longer than the test.
    let config = write_config(
        dir.path(),
        "[limits]\nmax_connections_per_ip = 100000\nheader_read_timeout = \"60s\"",
    );
    let server =
        Proc::start_with_nofile(dir.path(), &["--config", config.to_str().unwrap()], NOFILE);
    let addr: SocketAddr = server
        .origin
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    // 127.0.0.1 opens more sockets than the server has descriptors, and
    // sends nothing on them.
    let mut hogs = Vec::new();
    for _ in 0..(NOFILE + 64) {
        hogs.push(TcpStream::connect(addr).await.unwrap());
    }
    // Another address: the ops paths answer promptly.
    let http = crate::util::http_builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for path in ["/health", "/ready", "/metrics"] {
        let r = http
            .get(format!("{}{path}", server.origin))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} must answer at the ceiling: {e}"));
        assert_eq!(r.status(), 200, "{path}");
    }
    let text = http
        .get(format!("{}/metrics", server.origin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&text, "herald_fd_ceiling"), Some(f64::from(NOFILE)));
    let open = metric(&text, "herald_open_fds").unwrap();
    assert!(open > 100.0 && open < f64::from(NOFILE), "open fds {open}");
    let refused = metric(
        &text,
        "herald_connections_refused_total{reason=\"fd_reserve\"}",
    )
    .unwrap_or(0.0)
        + metric(
            &text,
            "herald_connections_refused_total{reason=\"fd_ceiling\"}",
        )
        .unwrap_or(0.0);
    assert!(refused >= 64.0, "refusals counted: {refused}\n{text}");
    // Anything else is refused fast in the reserve, not left to hang.
    let r = http
        .get(format!("{}/api/channels/x/messages", server.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    drop(hogs);
}
