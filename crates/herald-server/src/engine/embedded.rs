//! The embedded engine: history and inboxes in SQLite (WAL) under
//! `engine.path`, so a restart, or a `kill -9`, loses nothing that was answered.
//!
//! One writer thread owns the write connection and commits publishes in groups
//! (one transaction, one sync, for everything queued while the previous commit
//! ran): durable without paying a sync per message. A publish is answered only
//! after its group is committed. Reads use a small pool of read-only
//! connections; WAL lets them run while the writer commits.
//!
//! The epoch is per store: created with the database and kept in it, so it
//! survives restarts and changes only when the store itself is lost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::config::SyncMode;
use crate::ids::{random_token, unix_millis};

/// Most messages committed in one group.
const MAX_GROUP: usize = 8192;
/// Publish jobs waiting for the writer before publishers wait too.
const WRITER_QUEUE: usize = 1024;
/// Read connections kept open.
const READERS: usize = 4;
/// How often expired messages are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Stream positions the writer caches before it starts over.
const MAX_CACHED_STREAMS: usize = 200_000;

type Reply = oneshot::Sender<Result<Vec<Publication>, EngineError>>;

enum Job {
    Publish(Vec<PublishRequest>, Reply),
    Sweep,
}

/// SQLite-backed durable engine.
pub struct EmbeddedEngine {
    epoch: Arc<str>,
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
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
CREATE TABLE IF NOT EXISTS streams (stream TEXT PRIMARY KEY, top INTEGER NOT NULL, last_ts INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    stream TEXT NOT NULL,
    offset INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    expire_at INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (stream, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_expire_at ON messages (expire_at);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    stream TEXT NOT NULL,
    key TEXT NOT NULL,
    offset INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    expire_at INTEGER NOT NULL,
    PRIMARY KEY (stream, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_expire_at ON idempotency_keys (expire_at);
";

/// Expired idempotency keys deleted with each key stored: more than one, so
/// the table stays near what the window holds without a sweep of its own.
const KEYS_DELETED_PER_COMMIT: i64 = 64;

impl EmbeddedEngine {
    /// Opens (or creates) the store in directory `dir`.
    pub fn open(
        dir: &Path,
        sync: SyncMode,
        sink: Arc<dyn FanoutSink>,
    ) -> Result<Self, EngineError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| db_err(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("herald.db");
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
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let writer_epoch = epoch.clone();
        let writer = std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn(move || {
                Writer {
                    conn,
                    epoch: writer_epoch,
                    sink,
                    cache: HashMap::new(),
                }
                .run(rx)
            })
            .map_err(|e| db_err(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            epoch,
            path,
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Asks the writer to delete expired messages; called periodically.
    pub async fn sweep(&self) {
        let jobs = self.jobs.lock().clone();
        if let Some(jobs) = jobs {
            let _ = jobs.send(Job::Sweep).await;
        }
    }

    /// The idempotency keys still in their window, the newest `limit`,
    /// oldest first: a restarted node remembers them (read once at start).
    pub fn kept_keys(&self, limit: usize) -> Result<Vec<KeptKey>, EngineError> {
        let conn = Self::open_reader(&self.path)?;
        let mut stmt = conn
            .prepare(
                "SELECT stream, key, offset, ts, expire_at FROM idempotency_keys
                 WHERE expire_at > ?1 ORDER BY expire_at DESC LIMIT ?2",
            )
            .map_err(db_err)?;
        let limit = limit.min(i64::MAX as usize) as i64;
        let mut keys = stmt
            .query_map(params![unix_millis() as i64, limit], |r| {
                Ok(KeptKey {
                    stream: r.get::<_, String>(0)?.into(),
                    epoch: self.epoch.clone(),
                    key: r.get::<_, String>(1)?.into(),
                    offset: r.get::<_, i64>(2)? as u64,
                    ts: r.get::<_, i64>(3)? as u64,
                    expire_at: r.get::<_, i64>(4)? as u64,
                })
            })
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        keys.reverse();
        Ok(keys)
    }

    /// How often [`EmbeddedEngine::sweep`] should run.
    pub fn sweep_interval() -> Duration {
        SWEEP_EVERY
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

/// Stores an idempotency key in the message's transaction, and deletes a few
/// expired ones.
fn remember_key(
    tx: &rusqlite::Transaction<'_>,
    stream: &str,
    key: &StoredKey,
    offset: u64,
    ts: u64,
) -> Result<(), EngineError> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO idempotency_keys (stream, key, offset, ts, expire_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            stream,
            &*key.key,
            offset as i64,
            ts as i64,
            key.expire_at.min(i64::MAX as u64) as i64
        ])
    })
    .map_err(db_err)?;
    tx.prepare_cached(
        "DELETE FROM idempotency_keys WHERE (stream, key) IN
           (SELECT stream, key FROM idempotency_keys WHERE expire_at <= ?1 LIMIT ?2)",
    )
    .and_then(|mut s| s.execute(params![unix_millis() as i64, KEYS_DELETED_PER_COMMIT]))
    .map_err(db_err)?;
    Ok(())
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
    let top: i64 = tx
        .prepare_cached("SELECT top FROM streams WHERE stream = ?1")
        .and_then(|mut s| s.query_row([stream], |r| r.get(0)).optional())
        .map_err(db_err)?
        .unwrap_or(0);
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
        epoch: epoch.clone(),
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

    async fn publish(
        &self,
        requests: Vec<PublishRequest>,
    ) -> Result<Vec<Publication>, EngineError> {
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
        tokio::task::spawn_blocking(move || {
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

    async fn ready(&self) -> bool {
        self.jobs.lock().is_some()
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

struct Writer {
    conn: Connection,
    epoch: Arc<str>,
    sink: Arc<dyn FanoutSink>,
    /// (top, last_ts) per stream, as committed.
    cache: HashMap<Arc<str>, (u64, u64)>,
}

impl Writer {
    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.blocking_recv() {
            let mut group: Vec<(Vec<PublishRequest>, Reply)> = Vec::new();
            let mut count = 0;
            let mut sweep = false;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Publish(reqs, reply) => {
                        count += reqs.len();
                        group.push((reqs, reply));
                    }
                    Job::Sweep => sweep = true,
                }
                if count < MAX_GROUP {
                    next = jobs.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit_group(group);
            }
            if sweep {
                if let Err(e) = self.sweep() {
                    tracing::warn!(error = %e, "expiring old messages failed");
                }
            }
        }
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    }

    fn commit_group(&mut self, group: Vec<(Vec<PublishRequest>, Reply)>) {
        match self.write(&group) {
            Ok(publications) => {
                let all: Vec<Publication> = publications.iter().flatten().cloned().collect();
                self.sink.deliver(&all);
                for ((_, reply), pubs) in group.into_iter().zip(publications) {
                    let _ = reply.send(Ok(pubs));
                }
            }
            Err(e) => {
                // The transaction rolled back; cached positions may be ahead of the store.
                self.cache.clear();
                tracing::error!(error = %e, "store commit failed");
                for (_, reply) in group {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    fn write(
        &mut self,
        group: &[(Vec<PublishRequest>, Reply)],
    ) -> Result<Vec<Vec<Publication>>, EngineError> {
        if self.cache.len() > MAX_CACHED_STREAMS {
            self.cache.clear();
        }
        let tx = self.conn.transaction().map_err(db_err)?;
        let mut touched: HashMap<Arc<str>, (u64, u64, usize)> = HashMap::new();
        let mut out = Vec::with_capacity(group.len());
        {
            let mut load = tx
                .prepare_cached("SELECT top, last_ts FROM streams WHERE stream = ?1")
                .map_err(db_err)?;
            let mut insert = tx
                .prepare_cached("INSERT INTO messages (stream, offset, ts, expire_at, data) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(db_err)?;
            for (reqs, _) in group {
                let mut pubs = Vec::with_capacity(reqs.len());
                for req in reqs {
                    let (top, last_ts) = match touched
                        .get(&req.stream)
                        .map(|t| (t.0, t.1))
                        .or_else(|| self.cache.get(&req.stream).copied())
                    {
                        Some(pos) => pos,
                        None => load
                            .query_row([&*req.stream], |r| {
                                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                            })
                            .optional()
                            .map_err(db_err)?
                            .unwrap_or((0, 0)),
                    };
                    let offset = top + 1;
                    let ts = next_ts(last_ts);
                    insert
                        .execute(params![
                            &*req.stream,
                            offset as i64,
                            ts as i64,
                            expire_at(ts, req.retention.ttl).min(i64::MAX as u64) as i64,
                            &*req.data
                        ])
                        .map_err(db_err)?;
                    if let Some(key) = &req.key {
                        remember_key(&tx, &req.stream, key, offset, ts)?;
                    }
                    touched.insert(req.stream.clone(), (offset, ts, req.retention.size));
                    pubs.push(Publication {
                        stream: req.stream.clone(),
                        epoch: self.epoch.clone(),
                        offset,
                        ts,
                        data: req.data.clone(),
                    });
                }
                out.push(pubs);
            }
            let mut save = tx
                .prepare_cached(
                    "INSERT INTO streams (stream, top, last_ts) VALUES (?1, ?2, ?3)
                     ON CONFLICT (stream) DO UPDATE SET top = excluded.top, last_ts = excluded.last_ts",
                )
                .map_err(db_err)?;
            let mut trim = tx
                .prepare_cached("DELETE FROM messages WHERE stream = ?1 AND offset <= ?2")
                .map_err(db_err)?;
            for (stream, (top, ts, size)) in &touched {
                save.execute(params![&**stream, *top as i64, *ts as i64])
                    .map_err(db_err)?;
                if *top > *size as u64 {
                    trim.execute(params![&**stream, (*top - *size as u64) as i64])
                        .map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)?;
        for (stream, (top, ts, _)) in touched {
            self.cache.insert(stream, (top, ts));
        }
        Ok(out)
    }

    fn sweep(&mut self) -> Result<(), EngineError> {
        let now = unix_millis() as i64;
        loop {
            let deleted = self
                .conn
                .execute(
                    "DELETE FROM messages WHERE (stream, offset) IN
                       (SELECT stream, offset FROM messages WHERE expire_at <= ?1 LIMIT 10000)",
                    [now],
                )
                .map_err(db_err)?;
            if deleted < 10_000 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract::*;
    use super::*;

    #[tokio::test]
    async fn embedded_engine_contract() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Recorder::default());
        let engine = EmbeddedEngine::open(dir.path(), SyncMode::Normal, sink.clone()).unwrap();
        offsets_are_gap_free_and_history_is_exact(&engine, &sink).await;
        ttl_expires_messages_but_not_offsets(&engine).await;
        engine.sweep().await;
        engine.close().await;
    }

    #[tokio::test]
    async fn idempotency_keys_are_kept_with_their_message_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Recorder::default());
        let engine = EmbeddedEngine::open(dir.path(), SyncMode::Full, sink.clone()).unwrap();
        let keyed = |key: &str, expire_at: u64| PublishRequest {
            stream: "s".into(),
            data: "1".into(),
            retention: Retention {
                size: 10,
                ttl: Duration::from_secs(60),
            },
            key: Some(StoredKey {
                key: key.into(),
                expire_at,
            }),
        };
        let now = unix_millis();
        engine
            .publish(vec![keyed("old", now - 1), keyed("k1", now + 60_000)])
            .await
            .unwrap();
        engine.close().await;
        let engine = EmbeddedEngine::open(dir.path(), SyncMode::Full, sink).unwrap();
        let kept = engine.kept_keys(10).unwrap();
        assert_eq!(kept.len(), 1, "the expired key is not read back");
        assert_eq!(
            (&*kept[0].key, &*kept[0].stream, kept[0].offset),
            ("k1", "s", 2)
        );
        // Storing another key deletes expired ones.
        engine
            .publish(vec![keyed("k2", now + 60_000)])
            .await
            .unwrap();
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
    async fn reopening_keeps_epoch_offsets_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(Recorder::default());
        let engine = EmbeddedEngine::open(dir.path(), SyncMode::Full, sink.clone()).unwrap();
        let r = PublishRequest {
            stream: "s".into(),
            data: "{\"n\":1}".into(),
            retention: Retention {
                size: 10,
                ttl: Duration::from_secs(60),
            },
            key: None,
        };
        let first = engine.publish(vec![r.clone(), r.clone()]).await.unwrap();
        engine.close().await;
        let engine = EmbeddedEngine::open(dir.path(), SyncMode::Full, sink).unwrap();
        let next = engine.publish(vec![r]).await.unwrap();
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
}
