//! The one-send floor: the least a server can do per delivery — one
//! `send()` of a pre-encoded WebSocket frame to each subscriber — with one
//! thread, level-triggered epoll and no queues. It speaks just enough of
//! Herald's protocol for `herald bench fanout` and `herald bench idle`
//! (`connect`, `subscribe`, `POST /api/channels/{c}/messages`,
//! `POST /api/batch`), so the same load generator measures it. A send that
//! would block drops the subscriber (counted): the floor never queues.
//!
//! Written by hand on purpose: a library would add the very costs this
//! server exists to leave out. Not for production: no TLS, no auth beyond
//! a fixed API key, no limits.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use base64::Engine as _;
use serde_json::{json, Value};

const API_KEY: &str = "bench-api-key";
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

enum Phase {
    /// Reading an HTTP request (an upgrade or a publish).
    Http,
    /// A WebSocket.
    Ws,
}

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    phase: Phase,
    channels: Vec<String>,
}

struct Server {
    epoll: RawFd,
    conns: HashMap<RawFd, Conn>,
    rooms: HashMap<String, Vec<RawFd>>,
    offsets: HashMap<String, u64>,
    dropped: u64,
}

fn epoll_add(epoll: RawFd, fd: RawFd) {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: a valid epoll fd and socket fd; the event is copied by the kernel.
    unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) };
}

/// A server-to-client text frame (unmasked).
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n < 65536 => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// One `send()`; false when it did not take the whole frame.
fn send_once(fd: RawFd, bytes: &[u8]) -> bool {
    // SAFETY: `bytes` is a valid slice for the call's duration.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    n == bytes.len() as isize
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

impl Server {
    fn publish(&mut self, channel: &str, data: &Value) -> u64 {
        let offset = self.offsets.entry(channel.to_owned()).or_insert(0);
        *offset += 1;
        let offset = *offset;
        // Field order as Herald writes it (json! would sort the keys).
        let frame = text_frame(
            format!(
                r#"{{"type":"message","channel":{},"offset":{offset},"cursor":"e:{offset}","ts":0,"data":{data}}}"#,
                Value::from(channel)
            )
            .as_bytes(),
        );
        let mut gone = Vec::new();
        if let Some(fds) = self.rooms.get(channel) {
            for &fd in fds {
                if !send_once(fd, &frame) {
                    gone.push(fd);
                }
            }
        }
        for fd in gone {
            self.dropped += 1;
            self.close(fd);
        }
        offset
    }

    fn close(&mut self, fd: RawFd) {
        if let Some(c) = self.conns.remove(&fd) {
            for ch in &c.channels {
                if let Some(fds) = self.rooms.get_mut(ch) {
                    fds.retain(|f| *f != fd);
                }
            }
        }
    }

    /// Handles what `fd` has sent; false to close it.
    fn on_input(&mut self, fd: RawFd) -> bool {
        let Some(c) = self.conns.get_mut(&fd) else {
            return false;
        };
        let mut buf = [0u8; 16384];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => c.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        loop {
            let Some(c) = self.conns.get_mut(&fd) else {
                return false;
            };
            let progressed = match c.phase {
                Phase::Http => self.on_http(fd),
                Phase::Ws => self.on_ws(fd),
            };
            match progressed {
                Some(true) => continue,
                Some(false) => return true,
                None => return false,
            }
        }
    }

    /// One HTTP request if complete: Some(true) handled, Some(false) needs
    /// more bytes, None to close.
    fn on_http(&mut self, fd: RawFd) -> Option<bool> {
        let c = self.conns.get_mut(&fd)?;
        let Some(end) = find(&c.input, b"\r\n\r\n") else {
            return Some(false);
        };
        let head = String::from_utf8_lossy(&c.input[..end]).into_owned();
        let body_len: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if c.input.len() < end + 4 + body_len {
            return Some(false);
        }
        let body: Vec<u8> = c.input[end + 4..end + 4 + body_len].to_vec();
        c.input.drain(..end + 4 + body_len);
        let request_line = head.lines().next().unwrap_or_default().to_owned();
        let mut parts = request_line.split(' ');
        let (method, path) = (parts.next()?, parts.next()?);
        if method == "GET" && path.starts_with("/ws") {
            let key = header(&head, "sec-websocket-key")?;
            let mut sha = sha1_smol::Sha1::new();
            sha.update(key.as_bytes());
            sha.update(WS_GUID.as_bytes());
            let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
            let reply = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
            c.stream.write_all(reply.as_bytes()).ok()?;
            c.phase = Phase::Ws;
            return Some(true);
        }
        let authorized = header(&head, "authorization") == Some(&format!("Bearer {API_KEY}"));
        let answer = if method != "POST" || !authorized {
            (401, json!({"error": "unauthorized"}))
        } else if let Some(channel) = path
            .strip_prefix("/api/channels/")
            .and_then(|p| p.strip_suffix("/messages"))
        {
            let data: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let channel = channel.replace("%3A", ":");
            let offset = self.publish(&channel, &data);
            (200, json!({"ok": true, "channel": channel, "offset": offset}))
        } else if path == "/api/batch" {
            let batch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut results = Vec::new();
            for item in batch["items"].as_array().cloned().unwrap_or_default() {
                let channel = item["channel"].as_str().unwrap_or_default().to_owned();
                let offset = self.publish(&channel, &item["data"]);
                results.push(json!({"ok": true, "channel": channel, "offset": offset}));
            }
            (200, json!({ "results": results }))
        } else {
            (404, json!({"error": "not found"}))
        };
        let body = answer.1.to_string();
        let reply = format!(
            "HTTP/1.1 {} OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            answer.0,
            body.len()
        );
        let c = self.conns.get_mut(&fd)?;
        c.stream.write_all(reply.as_bytes()).ok()?;
        Some(true)
    }

    /// One client frame if complete (clients mask; small frames only).
    fn on_ws(&mut self, fd: RawFd) -> Option<bool> {
        let c = self.conns.get_mut(&fd)?;
        if c.input.len() < 2 {
            return Some(false);
        }
        let opcode = c.input[0] & 0x0f;
        let (len, mut at) = match c.input[1] & 0x7f {
            126 if c.input.len() >= 4 => (u16::from_be_bytes([c.input[2], c.input[3]]) as usize, 4),
            126 => return Some(false),
            127 => return None,
            n => (n as usize, 2),
        };
        if c.input.len() < at + 4 + len {
            return Some(false);
        }
        let mask = [c.input[at], c.input[at + 1], c.input[at + 2], c.input[at + 3]];
        at += 4;
        let payload: Vec<u8> = c.input[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        c.input.drain(..at + len);
        match opcode {
            0x8 => return None,
            0x9 => {
                let mut pong = vec![0x8a, payload.len() as u8];
                pong.extend_from_slice(&payload);
                c.stream.write_all(&pong).ok()?;
            }
            0x1 => {
                let cmd: Value = serde_json::from_slice(&payload).ok()?;
                let id = cmd["id"].clone();
                let reply = match cmd["type"].as_str() {
                    Some("connect") => json!({"type": "connected", "id": id, "client": "floor"}),
                    Some("subscribe") => {
                        let channel = cmd["channel"].as_str()?.to_owned();
                        let top = self.offsets.get(&channel).copied().unwrap_or(0);
                        self.rooms.entry(channel.clone()).or_default().push(fd);
                        self.conns.get_mut(&fd)?.channels.push(channel.clone());
                        json!({"type": "subscribed", "id": id, "channel": channel, "cursor": format!("e:{top}"), "recovered": true, "missed": 0})
                    }
                    _ => return Some(true),
                };
                let c = self.conns.get_mut(&fd)?;
                c.stream
                    .write_all(&text_frame(reply.to_string().as_bytes()))
                    .ok()?;
            }
            _ => {}
        }
        Some(true)
    }
}

fn main() -> io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "0".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}"))?;
    listener.set_nonblocking(true)?;
    println!("floor listening on http://{}", listener.local_addr()?);
    // SAFETY: plain syscall.
    let epoll = unsafe { libc::epoll_create1(0) };
    epoll_add(epoll, listener.as_raw_fd());
    let mut server = Server {
        epoll,
        conns: HashMap::new(),
        rooms: HashMap::new(),
        offsets: HashMap::new(),
        dropped: 0,
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        // SAFETY: `events` has room for its length.
        let n = unsafe { libc::epoll_wait(server.epoll, events.as_mut_ptr(), events.len() as i32, -1) };
        for ev in events.iter().take(n.max(0) as usize) {
            let fd = ev.u64 as RawFd;
            if fd == listener.as_raw_fd() {
                while let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    let fd = stream.as_raw_fd();
                    epoll_add(server.epoll, fd);
                    server.conns.insert(
                        fd,
                        Conn {
                            stream,
                            input: Vec::new(),
                            phase: Phase::Http,
                            channels: Vec::new(),
                        },
                    );
                }
            } else if !server.on_input(fd) {
                server.close(fd);
            }
        }
        if server.dropped > 0 && server.dropped % 1000 == 1 {
            eprintln!("dropped {} subscribers whose socket was full", server.dropped);
        }
    }
}
