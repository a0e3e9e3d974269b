//! The embedded engine: history and inboxes in SQLite (WAL) under
//! `engine.path`, so a restart, or a `kill -9`, loses nothing that was answered.
//!
//! One writer thread ([`writer`]) owns the write connection and commits
//! publishes in groups (one transaction, one sync, for everything queued while
//! the previous commit ran): durable without paying a sync per message. A
//! publish is answered only after its group is committed. Reads use a small
//! pool of read-only connections; WAL lets them run while the writer commits.
//! Expiry and the removal of empty streams ([`sweep`]) run on the writer too,
//! in small slices between publish groups.
//!
//! Epochs: the store's epoch is created with the database and kept in it, so
//! it survives restarts. Each stream takes the epoch of the sweep generation
//! it was created in ([`stream_epoch`]), kept in its row.

mod sweep;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::config::SyncMode;
use crate::ids::{random_token, unix_millis};
use writer::Writer;

/// Publish jobs waiting for the writer before publishers wait too.
const WRITER_QUEUE: usize = 1024;
/// Read connections, opened at start and never more: each holds file
/// descriptors, and a crowd of concurrent history reads must not turn into
/// a crowd of open files (reads wait for a free one instead).
const READERS: usize = 4;
/// While the store refuses writes, `/ready` probes it at most this often.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long `/ready` waits for a probe write.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

type Reply = oneshot::Sender<Result<Vec<Outcome>, EngineError>>;

enum Job {
    Publish(Vec<PublishRequest>, Reply),
    /// Start a sweep (or join the one running); answered when it is done.
    Sweep(oneshot::Sender<SweepReport>),
    /// Try a small write: can the store take writes again?
    Probe(oneshot::Sender<bool>),
    /// `PRAGMA max_page_count`: simulates a full disk in tests.
    LimitPages(u64, oneshot::Sender<u64>),
}

/// What the writer shares with the engine's readers and gauges.
#[derive(Debug, Default)]
struct Shared {
    channels: AtomicU64,
    streams: AtomicU64,
    history_bytes: AtomicU64,
    /// Rows of `undelivered` (kept exact by whoever inserts or deletes).
    undelivered: AtomicU64,
    /// Whether the last write (commit or probe) succeeded.
    healthy: AtomicBool,
    last_probe: Mutex<Option<Instant>>,
}

/// SQLite-backed durable engine.
pub struct EmbeddedEngine {
    epoch: Arc<str>,
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// One permit per read connection.
    read_slots: Arc<tokio::sync::Semaphore>,
    /// The one connection read cursors are written on, opened at first use:
    /// acks wait their turn for it (asynchronously), so a flood of them
    /// holds one descriptor set and one blocking thread, not one each.
    cursor_db: Arc<tokio::sync::Mutex<Option<Connection>>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EmbeddedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedEngine")
            .field("path", &self.path)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

fn db_err(e: impl std::fmt::Display) -> EngineError {
    EngineError(format!("store: {e}"))
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams (stream TEXT PRIMARY KEY, top INTEGER NOT NULL, last_ts INTEGER NOT NULL, gen INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    stream TEXT NOT NULL,
    offset INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    expire_at INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (stream, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_expire_at ON messages (expire_at);
CREATE TABLE IF NOT EXISTS read_cursors (stream TEXT PRIMARY KEY, epoch TEXT NOT NULL, offset INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency_keys (
    stream TEXT NOT NULL,
    key TEXT NOT NULL,
    epoch TEXT NOT NULL,
    offset INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    expire_at INTEGER NOT NULL,
    PRIMARY KEY (stream, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_expire_at ON idempotency_keys (expire_at);
CREATE TABLE IF NOT EXISTS undelivered (
    stream TEXT NOT NULL,
    offset INTEGER NOT NULL,
    epoch TEXT NOT NULL,
    due INTEGER NOT NULL,
    PRIMARY KEY (stream, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS undelivered_due ON undelivered (due);
";

/// Reads a number kept in `meta` (0 when absent).
fn meta_u64(conn: &Connection, key: &str) -> Result<u64, EngineError> {
    let value: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
        .map_err(db_err)?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Brings a store made by an older version up to the current schema.
fn migrate(conn: &Connection) -> Result<(), EngineError> {
    let has_gen: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('streams') WHERE name = 'gen'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(db_err)?
        > 0;
    if !has_gen {
        // Streams from before generations belong to generation 0, whose
        // epoch is the store's: their clients' cursors stay valid.
        conn.execute_batch("ALTER TABLE streams ADD COLUMN gen INTEGER NOT NULL DEFAULT 0")
            .map_err(db_err)?;
    }
    Ok(())
}

impl EmbeddedEngine {
    /// Opens (or creates) the store in directory `dir`.
    pub fn open(
        dir: &Path,
        sync: SyncMode,
        sink: Arc<dyn FanoutSink>,
        budget: Budget,
    ) -> Result<Self, EngineError> {
        crate::private_fs::create_dir(dir)
            .map_err(|e| db_err(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("herald.db");
        // Created 0600 before SQLite opens it: SQLite gives the -wal and -shm
        // files the database file's mode, so all three stay private.
        crate::private_fs::touch(&path)
            .map_err(|e| db_err(format!("cannot create {}: {e}", path.display())))?;
        let mut conn = Connection::open(&path).map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        let sync_pragma = match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync_pragma)
            .map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        migrate(&conn)?;
        let epoch = {
            let tx = conn.transaction().map_err(db_err)?;
            let existing: Option<String> = tx
                .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db_err)?;
            let epoch = match existing {
                Some(e) => e,
                None => {
                    let e = random_token(8);
                    tx.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?1)", [&e])
                        .map_err(db_err)?;
                    e
                }
            };
            tx.commit().map_err(db_err)?;
            epoch
        };
        let epoch: Arc<str> = epoch.into();
        let readers = (0..READERS)
            .map(|_| Self::open_reader(&path))
            .collect::<Result<Vec<_>, _>>()?;
        let shared = Arc::new(Shared::default());
        let pending: i64 = conn
            .query_row("SELECT COUNT(*) FROM undelivered", [], |r| r.get(0))
            .map_err(db_err)?;
        shared
            .undelivered
            .store(pending.max(0) as u64, Ordering::Relaxed);
        let writer = Writer::new(conn, epoch.clone(), sink, budget, shared.clone())?;
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let writer = std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| db_err(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            epoch,
            path,
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(Mutex::new(readers)),
            cursor_db: Arc::new(tokio::sync::Mutex::new(None)),
            read_slots: Arc::new(tokio::sync::Semaphore::new(READERS)),
            shared,
        })
    }

    async fn send(&self, job: Job) -> bool {
        let jobs = self.jobs.lock().clone();
        match jobs {
            Some(jobs) => jobs.send(job).await.is_ok(),
            None => false,
        }
    }

    /// Caps the database at `pages` pages (never below its current size), so
    /// that writes needing more fail as on a full disk; returns the cap in
    /// force. For tests of what a full store does.
    #[doc(hidden)]
    pub async fn limit_pages_for_tests(&self, pages: u64) -> u64 {
        let (tx, rx) = oneshot::channel();
        if !self.send(Job::LimitPages(pages, tx)).await {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// The idempotency keys still in their window, the newest `limit`,
    /// oldest first: a restarted node remembers them (read once at start).
    pub fn kept_keys(&self, limit: usize) -> Result<Vec<KeptKey>, EngineError> {
        let conn = Self::open_reader(&self.path)?;
        let mut stmt = conn
            .prepare(
                "SELECT stream, key, epoch, offset, ts, expire_at FROM idempotency_keys
                 WHERE expire_at > ?1 ORDER BY expire_at DESC LIMIT ?2",
            )
            .map_err(db_err)?;
        let limit = limit.min(i64::MAX as usize) as i64;
        let mut keys = stmt
            .query_map(params![unix_millis() as i64, limit], |r| {
                Ok(KeptKey {
                    stream: r.get::<_, String>(0)?.into(),
                    key: r.get::<_, String>(1)?.into(),
                    epoch: r.get::<_, String>(2)?.into(),
                    offset: r.get::<_, i64>(3)? as u64,
                    ts: r.get::<_, i64>(4)? as u64,
                    expire_at: r.get::<_, i64>(5)? as u64,
                })
            })
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        keys.reverse();
        Ok(keys)
    }

    /// Runs `work` on the connection read cursors and pending
    /// notifications are written on (opened at first use), off the runtime.
    async fn on_cursor_db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let path = self.path.clone();
        let mut db = self.cursor_db.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || {
            let conn = match db.as_mut() {
                Some(conn) => conn,
                None => {
                    let conn = Connection::open(&path).map_err(db_err)?;
                    conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
                    db.insert(conn)
                }
            };
            work(conn)
        })
        .await
        .map_err(|e| db_err(format!("store task failed: {e}")))?
    }

    fn open_reader(path: &Path) -> Result<Connection, EngineError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        Ok(conn)
    }
}

fn read_cursor_row(
    conn: &Connection,
    stream: &str,
) -> Result<Option<(Arc<str>, u64)>, EngineError> {
    conn.query_row(
        "SELECT epoch, offset FROM read_cursors WHERE stream = ?1",
        [stream],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
    )
    .optional()
    .map_err(db_err)
    .map(|row| row.map(|(e, o)| (Arc::from(e), o.max(0) as u64)))
}

fn read_history(
    conn: &mut Connection,
    epoch: &Arc<str>,
    stream: &str,
    from: HistoryFrom,
    limit: usize,
    max_bytes: usize,
) -> Result<HistoryPage, EngineError> {
    let now = unix_millis() as i64;
    // One read transaction: position and page come from the same snapshot.
    let tx = conn.transaction().map_err(db_err)?;
    let row: Option<(i64, i64)> = tx
        .prepare_cached("SELECT top, gen FROM streams WHERE stream = ?1")
        .and_then(|mut s| {
            s.query_row([stream], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db_err)?;
    // A stream with no row takes the current generation's epoch: the one it
    // will be created with, so its `E:0` cursor stays valid.
    let (top, generation) = match row {
        Some((top, generation)) => (top, generation as u64),
        None => (0, meta_u64(&tx, "generation")?),
    };
    let epoch = stream_epoch(epoch, generation);
    let first: Option<(i64, i64)> = tx
        .prepare_cached("SELECT offset, ts FROM messages WHERE stream = ?1 AND expire_at > ?2 ORDER BY offset LIMIT 1")
        .and_then(|mut s| s.query_row(params![stream, now], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(db_err)?;
    let limit = limit.min(i64::MAX as usize) as i64;
    let mut messages = Vec::new();
    if limit > 0 {
        let (sql, bound) = match from {
            HistoryFrom::Oldest => ("SELECT offset, ts, data FROM messages WHERE stream = ?1 AND expire_at > ?2 AND offset > ?3 ORDER BY offset LIMIT ?4", 0),
            HistoryFrom::AfterOffset(o) => ("SELECT offset, ts, data FROM messages WHERE stream = ?1 AND expire_at > ?2 AND offset > ?3 ORDER BY offset LIMIT ?4", o.min(i64::MAX as u64) as i64),
            HistoryFrom::AfterTime(t) => ("SELECT offset, ts, data FROM messages WHERE stream = ?1 AND expire_at > ?2 AND ts > ?3 ORDER BY offset LIMIT ?4", t.min(i64::MAX as u64) as i64),
        };
        let mut stmt = tx.prepare_cached(sql).map_err(db_err)?;
        let rows = stmt
            .query_map(params![stream, now, bound, limit], |r| {
                Ok(StoredMessage {
                    offset: r.get::<_, i64>(0)? as u64,
                    ts: r.get::<_, i64>(1)? as u64,
                    data: r.get::<_, String>(2)?.into(),
                })
            })
            .map_err(db_err)?;
        // Rows are read one at a time, so the byte cap also bounds what is
        // read out of the store, not only what is returned.
        let mut total = 0usize;
        for row in rows {
            let m = row.map_err(db_err)?;
            total = total.saturating_add(m.data.len());
            if total > max_bytes && !messages.is_empty() {
                break;
            }
            messages.push(m);
        }
    }
    Ok(HistoryPage {
        epoch,
        top: top as u64,
        first_kept: first.map_or(top as u64 + 1, |(o, _)| o as u64),
        first_kept_ts: first.map(|(_, ts)| ts as u64),
        messages,
    })
}

#[async_trait]
impl Engine for EmbeddedEngine {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn publish(&self, requests: Vec<PublishRequest>) -> Result<Vec<Outcome>, EngineError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let jobs = self
            .jobs
            .lock()
            .clone()
            .ok_or_else(|| EngineError("store is closed".into()))?;
        let (reply, answer) = oneshot::channel();
        jobs.send(Job::Publish(requests, reply))
            .await
            .map_err(|_| EngineError("store is closed".into()))?;
        answer
            .await
            .map_err(|_| EngineError("store writer stopped".into()))?
    }

    async fn history(
        &self,
        stream: &str,
        from: HistoryFrom,
        limit: usize,
        max_bytes: usize,
    ) -> Result<HistoryPage, EngineError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let epoch = self.epoch.clone();
        let stream = stream.to_owned();
        let slot = self
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| db_err("store closed"))?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            // A connection the pool lost to an error is opened anew.
            let pooled = readers.lock().pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => Self::open_reader(&path)?,
            };
            let result = read_history(&mut conn, &epoch, &stream, from, limit, max_bytes);
            let mut pool = readers.lock();
            if pool.len() < READERS {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| db_err(format!("reader task failed: {e}")))?
    }

    async fn read_cursor(&self, stream: &str) -> Result<Option<(Arc<str>, u64)>, EngineError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let stream = stream.to_owned();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().pop();
            let conn = match pooled {
                Some(c) => c,
                None => Self::open_reader(&path)?,
            };
            let result = read_cursor_row(&conn, &stream);
            let mut pool = readers.lock();
            if pool.len() < READERS {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| db_err(format!("reader task failed: {e}")))?
    }

    /// Written on a connection of its own (SQLite's busy timeout waits for
    /// the writer's transaction): one small upsert, no job for the writer.
    async fn mark_read(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<(Arc<str>, u64), EngineError> {
        let stream = stream.to_owned();
        let epoch = epoch.to_owned();
        self.on_cursor_db(move |conn| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let kept = super::later_read(read_cursor_row(&tx, &stream)?, &epoch, offset);
            tx.execute(
                "INSERT INTO read_cursors (stream, epoch, offset) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (stream) DO UPDATE SET epoch = excluded.epoch, offset = excluded.offset",
                rusqlite::params![stream, &*kept.0, kept.1 as i64],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(kept)
        })
        .await
    }

    /// Deletes the pending rows the marks cover (the rows were committed
    /// with their message, before its fan-out could mark them), on the
    /// read cursors' connection.
    async fn mark_delivered(
        &self,
        marks: &[(Arc<str>, Arc<str>, u64)],
        _keep: Duration,
    ) -> Result<(), EngineError> {
        let marks = marks.to_vec();
        let shared = self.shared.clone();
        self.on_cursor_db(move |conn| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let mut deleted = 0u64;
            {
                let mut delete = tx
                    .prepare_cached(
                        "DELETE FROM undelivered WHERE stream = ?1 AND epoch = ?2 AND offset <= ?3",
                    )
                    .map_err(db_err)?;
                for (stream, epoch, upto) in &marks {
                    deleted += delete
                        .execute(params![
                            &**stream,
                            &**epoch,
                            (*upto).min(i64::MAX as u64) as i64
                        ])
                        .map_err(db_err)? as u64;
                }
            }
            tx.commit().map_err(db_err)?;
            shared.undelivered.fetch_sub(deleted, Ordering::AcqRel);
            Ok(())
        })
        .await
    }

    async fn claim_undelivered(
        &self,
        now: u64,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<PendingNotification>, EngineError> {
        let until = expire_at(now, lease).min(i64::MAX as u64) as i64;
        let now = now.min(i64::MAX as u64) as i64;
        let max = max.min(i64::MAX as usize) as i64;
        self.on_cursor_db(move |conn| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let claimed = {
                let mut due = tx
                    .prepare_cached(
                        "UPDATE undelivered SET due = ?1 WHERE (stream, offset) IN
                           (SELECT stream, offset FROM undelivered WHERE due <= ?2 ORDER BY due LIMIT ?3)
                         RETURNING stream, epoch, offset",
                    )
                    .map_err(db_err)?;
                let rows = due
                    .query_map(params![until, now, max], |r| {
                        Ok(PendingNotification {
                            stream: r.get::<_, String>(0)?.into(),
                            epoch: r.get::<_, String>(1)?.into(),
                            offset: r.get::<_, i64>(2)?.max(0) as u64,
                        })
                    })
                    .map_err(db_err)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db_err)?;
                rows
            };
            tx.commit().map_err(db_err)?;
            Ok(claimed)
        })
        .await
    }

    async fn finish_undelivered(&self, done: &[PendingNotification]) -> Result<(), EngineError> {
        let done: Vec<(Arc<str>, u64)> =
            done.iter().map(|p| (p.stream.clone(), p.offset)).collect();
        let shared = self.shared.clone();
        self.on_cursor_db(move |conn| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let mut deleted = 0u64;
            {
                let mut delete = tx
                    .prepare_cached("DELETE FROM undelivered WHERE stream = ?1 AND offset = ?2")
                    .map_err(db_err)?;
                for (stream, offset) in &done {
                    deleted += delete
                        .execute(params![&**stream, (*offset).min(i64::MAX as u64) as i64])
                        .map_err(db_err)? as u64;
                }
            }
            tx.commit().map_err(db_err)?;
            shared.undelivered.fetch_sub(deleted, Ordering::AcqRel);
            Ok(())
        })
        .await
    }

    async fn ready(&self) -> bool {
        if self.jobs.lock().is_none() {
            return false;
        }
        if self.shared.healthy.load(Ordering::Acquire) {
            return true;
        }
        // The last write failed. A publish that succeeds makes the store
        // ready again; so does a small probe write, at most one a second
        // however often `/ready` is asked.
        {
            let mut last = self.shared.last_probe.lock();
            if last.is_some_and(|t| t.elapsed() < PROBE_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let (tx, rx) = oneshot::channel();
        if !self.send(Job::Probe(tx)).await {
            return false;
        }
        matches!(tokio::time::timeout(PROBE_TIMEOUT, rx).await, Ok(Ok(true)))
    }

    async fn sweep(&self) -> SweepReport {
        let (tx, rx) = oneshot::channel();
        if !self.send(Job::Sweep(tx)).await {
            return SweepReport::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Without the file sizes [`Engine::usage`] reads.
    fn undelivered_pending(&self) -> u64 {
        self.shared.undelivered.load(Ordering::Relaxed)
    }

    fn usage(&self) -> Usage {
        let size = |suffix: &str| {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            std::fs::metadata(name).map_or(0, |m| m.len())
        };
        Usage {
            channels: self.shared.channels.load(Ordering::Relaxed),
            streams: self.shared.streams.load(Ordering::Relaxed),
            history_bytes: self.shared.history_bytes.load(Ordering::Relaxed),
            store_bytes: size("") + size("-wal"),
            remote_subscriptions: 0,
            undelivered: self.shared.undelivered.load(Ordering::Relaxed),
        }
    }

    async fn close(&self) {
        // Dropping the sender lets the writer finish every queued job, then exit.
        drop(self.jobs.lock().take());
        let writer = self.writer.lock().take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        self.readers.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract::*;
    use super::*;

    fn open(dir: &Path, sink: Arc<Recorder>, budget: Budget) -> EmbeddedEngine {
        EmbeddedEngine::open(dir, SyncMode::Normal, sink, budget).unwrap()
    }

    fn req(stream: &str, data: &str, ttl: Duration) -> PublishRequest {
        PublishRequest {
            stream: stream.into(),
            data: data.into(),
            retention: Retention {
                size: 1_000_000,
                ttl,
            },
            key: None,
            undelivered_after: None,
        }
    }

    async fn publish(engine: &EmbeddedEngine, reqs: Vec<PublishRequest>) -> Vec<Publication> {
        engine
            .publish(reqs)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.unwrap())
            .collect()
    }

    #[tokio::test]
    async fn idempotency_keys_are_kept_with_their_message_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Recorder::default());
        let engine = open(dir.path(), sink.clone(), Budget::UNLIMITED);
        let keyed = |key: &str, expire_at: u64| PublishRequest {
            key: Some(StoredKey {
                key: key.into(),
                expire_at,
            }),
            ..req("s", "1", Duration::from_secs(60))
        };
        let now = unix_millis();
        let first = publish(
            &engine,
            vec![keyed("old", now - 1), keyed("k1", now + 60_000)],
        )
        .await;
        engine.close().await;
        let engine = open(dir.path(), sink, Budget::UNLIMITED);
        let kept = engine.kept_keys(10).unwrap();
        assert_eq!(kept.len(), 1, "the expired key is not read back");
        assert_eq!(
            (&*kept[0].key, &*kept[0].stream, kept[0].offset),
            ("k1", "s", 2)
        );
        assert_eq!(kept[0].epoch, first[1].epoch, "the stream's own epoch");
        // Storing another key deletes expired ones.
        publish(&engine, vec![keyed("k2", now + 60_000)]).await;
        let conn = EmbeddedEngine::open_reader(&engine.path).unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM idempotency_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
        assert_eq!(
            engine.kept_keys(1).unwrap()[0].key.as_ref(),
            "k2",
            "the newest first"
        );
        engine.close().await;
    }

    #[tokio::test]
    async fn embedded_engine_contract() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Recorder::default());
        let engine = open(dir.path(), sink.clone(), Budget::UNLIMITED);
        offsets_are_gap_free_and_history_is_exact(&engine, &sink).await;
        ttl_expires_messages_but_not_offsets(&engine).await;
        sweeping_removes_expired_and_empty_unwatched_streams(&engine, &sink).await;
        read_cursors_move_forward_only(&engine).await;
        undelivered_are_claimed_once_unless_delivered(&engine).await;
        engine.close().await;
    }

    #[tokio::test]
    async fn embedded_engine_budgets() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Recorder::default());
        let budget = Budget {
            max_channels: 2,
            max_history_bytes: 10,
        };
        let engine = open(dir.path(), sink.clone(), budget);
        budgets_refuse_new_channels_and_history_bytes(&engine).await;
        let usage = engine.usage();
        engine.close().await;
        // The totals are read back from the store at open.
        let engine = open(dir.path(), sink, budget);
        assert_eq!(
            (
                engine.usage().channels,
                engine.usage().streams,
                engine.usage().history_bytes
            ),
            (usage.channels, usage.streams, usage.history_bytes)
        );
        assert!(engine.usage().store_bytes > 0);
        engine.close().await;
    }

    #[tokio::test]
    async fn reopening_keeps_epoch_offsets_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Recorder::default());
        let engine = open(dir.path(), sink.clone(), Budget::UNLIMITED);
        let r = req("s", "{\"n\":1}", Duration::from_secs(60));
        let first = publish(&engine, vec![r.clone(), r.clone()]).await;
        engine.close().await;
        let engine = open(dir.path(), sink, Budget::UNLIMITED);
        let next = publish(&engine, vec![r]).await;
        assert_eq!(next[0].offset, 3);
        assert_eq!(next[0].epoch, first[0].epoch);
        let page = engine
            .history("s", HistoryFrom::Oldest, 10, usize::MAX)
            .await
            .unwrap();
        assert_eq!(page.messages.len(), 3);
        assert_eq!(&*page.messages[0].data, "{\"n\":1}");
        engine.close().await;
    }

    /// The generation survives a restart: a stream removed before it does
    /// not come back under its old epoch after it.
    #[tokio::test]
    async fn a_removed_stream_keeps_a_new_epoch_across_restart() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Recorder::default());
        let engine = open(dir.path(), sink.clone(), Budget::UNLIMITED);
        let old = publish(&engine, vec![req("s", "1", Duration::from_millis(1))]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(engine.sweep().await.streams_removed, 1);
        engine.close().await;
        let engine = open(dir.path(), sink, Budget::UNLIMITED);
        let new = publish(&engine, vec![req("s", "1", Duration::from_secs(60))]).await;
        assert_eq!(new[0].offset, 1);
        assert_ne!(new[0].epoch, old[0].epoch);
        assert_eq!(engine.usage().streams, 1);
        engine.close().await;
    }

    /// The writer's running totals (trims, expiry, removal, several
    /// publishes per stream and group) always equal what the store holds.
    #[tokio::test]
    async fn running_totals_match_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Recorder::default());
        let engine = open(dir.path(), sink, Budget::UNLIMITED);
        let conn = EmbeddedEngine::open_reader(&dir.path().join("herald.db")).unwrap();
        let check = |engine: &EmbeddedEngine| {
            let (channels, streams, bytes): (i64, i64, i64) = conn
                .query_row(
                    "SELECT (SELECT COUNT(*) FROM streams WHERE stream NOT LIKE '#%'),
                            (SELECT COUNT(*) FROM streams),
                            (SELECT COALESCE(SUM(length(CAST(data AS BLOB))), 0) FROM messages)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap();
            let u = engine.usage();
            assert_eq!(
                (u.channels, u.streams, u.history_bytes),
                (channels as u64, streams as u64, bytes as u64)
            );
        };
        for round in 0..10u64 {
            let batch = (0..60u64)
                .map(|i| {
                    let n = (i * 7 + round * 13) % 20;
                    let stream = if n % 5 == 0 {
                        format!("#user{n}")
                    } else {
                        format!("ch{n}")
                    };
                    PublishRequest {
                        stream: stream.into(),
                        data: "x".repeat(1 + ((i + round) % 9) as usize).into(),
                        retention: Retention {
                            size: 1 + (n % 7) as usize,
                            ttl: Duration::from_millis(if n % 3 == 0 { 1 } else { 60_000 }),
                        },
                        key: None,
                        undelivered_after: None,
                    }
                })
                .collect();
            publish(&engine, batch).await;
            check(&engine);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let report = engine.sweep().await;
        assert!(
            report.expired > 0 && report.streams_removed > 0,
            "{report:?}"
        );
        check(&engine);
        engine.close().await;
    }

    fn count_rows(path: &Path) -> i64 {
        let conn = EmbeddedEngine::open_reader(path).unwrap();
        conn.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .unwrap()
    }

    /// 15.4: a sweep of a large expired backlog runs in slices; a publish made
    /// while it runs is answered before the backlog is gone. Before, the
    /// writer deleted the whole backlog first (the publish found it empty).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_does_not_wait_for_the_whole_sweep() {
        const ROWS: usize = 200_000;
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Recorder::default());
        let engine = Arc::new(open(dir.path(), sink, Budget::UNLIMITED));
        for _ in 0..ROWS / 8000 {
            let batch = (0..8000)
                .map(|_| req("bulk", "1", Duration::from_millis(1)))
                .collect();
            publish(&engine, batch).await;
        }
        let db = dir.path().join("herald.db");
        assert_eq!(count_rows(&db), ROWS as i64);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let sweeping = tokio::spawn({
            let engine = engine.clone();
            async move { engine.sweep().await }
        });
        // Wait (bounded) until the sweep has begun deleting.
        let deadline = Instant::now() + Duration::from_secs(20);
        while count_rows(&db) == ROWS as i64 {
            assert!(Instant::now() < deadline, "the sweep never started");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = Instant::now();
        let p = publish(&engine, vec![req("live", "1", Duration::from_secs(60))]).await;
        let waited = started.elapsed();
        let left = count_rows(&db);
        assert_eq!(p[0].offset, 1);
        assert!(
            left > 1,
            "the publish was answered only after the backlog was gone"
        );
        assert!(waited < Duration::from_secs(1), "publish waited {waited:?}");
        let report = tokio::time::timeout(Duration::from_secs(60), sweeping)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.expired, ROWS as u64);
        assert_eq!(count_rows(&db), 1);
        assert_eq!(engine.usage().history_bytes, 1);
        engine.close().await;
    }

    /// A store that refuses writes is not ready; it is again once it takes
    /// them (a probe write, at most one a second).
    #[tokio::test]
    async fn a_full_store_is_not_ready_until_it_takes_writes() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Recorder::default());
        let engine = open(dir.path(), sink, Budget::UNLIMITED);
        assert!(engine.ready().await);
        engine.limit_pages_for_tests(1).await;
        let big = "x".repeat(60_000);
        let mut failed = false;
        for _ in 0..100 {
            if engine
                .publish(vec![req("s", &big, Duration::from_secs(60))])
                .await
                .is_err()
            {
                failed = true;
                break;
            }
        }
        assert!(failed, "the capped store kept taking writes");
        assert!(!engine.ready().await);
        engine.limit_pages_for_tests(1 << 30).await;
        // The probe of the last call may be less than a second old.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !engine.ready().await {
            assert!(Instant::now() < deadline, "never ready again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        publish(&engine, vec![req("s", "1", Duration::from_secs(60))]).await;
        engine.close().await;
    }
}
