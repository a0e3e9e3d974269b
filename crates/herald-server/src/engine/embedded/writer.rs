//! The store's one writer thread: group commit of publishes, the budgets
//! (checked before a message is stored, with exact running totals), and the
//! health of the store (the outcome of the last write), interleaved with the
//! slices of a sweep ([`super::sweep`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::sweep::SweepRun;
use super::{db_err, meta_u64, Job, Reply, Shared};
use crate::engine::{
    expire_at, is_channel, next_ts, stream_epoch, Budget, EngineError, FanoutSink, Outcome,
    Publication, PublishRequest, Refusal, StoredKey, SweepReport,
};
use crate::ids::unix_millis;

/// Most messages committed in one group.
const MAX_GROUP: usize = 8192;
/// Stream positions the writer caches before it starts over.
const MAX_CACHED_STREAMS: usize = 200_000;
/// Generations whose epoch strings the writer keeps.
const MAX_CACHED_EPOCHS: usize = 64;
/// Size of the probe write that tells whether the store takes writes again:
/// about a message's worth, so a store that can take it can take publishes.
const PROBE_BYTES: usize = 8192;

/// A stream's position as committed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pos {
    pub(super) top: u64,
    pub(super) last_ts: u64,
    /// The sweep generation the stream was created in.
    pub(super) generation: u64,
}

/// The running totals the budgets are checked against.
#[derive(Debug, Clone, Copy)]
pub(super) struct Totals {
    pub(super) channels: u64,
    pub(super) streams: u64,
    pub(super) history_bytes: u64,
}

pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) books: Books,
    pub(super) sink: Arc<dyn FanoutSink>,
    shared: Arc<Shared>,
    pub(super) sweep: Option<SweepRun>,
}

impl Writer {
    /// Reads the running totals and the generation from the store.
    pub(super) fn new(
        conn: Connection,
        base_epoch: Arc<str>,
        sink: Arc<dyn FanoutSink>,
        budget: Budget,
        shared: Arc<Shared>,
    ) -> Result<Self, EngineError> {
        let count = |sql: &str| {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
                .map_err(db_err)
        };
        // One scan at open; from then on every insert, trim and sweep keeps
        // the total exact.
        let totals = Totals {
            channels: count("SELECT COUNT(*) FROM streams WHERE substr(stream, 1, 1) <> '#'")?,
            streams: count("SELECT COUNT(*) FROM streams")?,
            history_bytes: count(
                "SELECT COALESCE(SUM(length(CAST(data AS BLOB))), 0) FROM messages",
            )?,
        };
        let generation = meta_u64(&conn, "generation")?;
        let writer = Self {
            conn,
            books: Books {
                base_epoch,
                generation,
                budget,
                cache: HashMap::new(),
                epochs: HashMap::new(),
                totals,
            },
            sink,
            shared,
            sweep: None,
        };
        writer.shared.healthy.store(true, Ordering::Release);
        writer.publish_totals();
        Ok(writer)
    }

    pub(super) fn publish_totals(&self) {
        self.shared
            .channels
            .store(self.books.totals.channels, Ordering::Relaxed);
        self.shared
            .streams
            .store(self.books.totals.streams, Ordering::Relaxed);
        self.shared
            .history_bytes
            .store(self.books.totals.history_bytes, Ordering::Relaxed);
    }

    pub(super) fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        loop {
            // While a sweep runs, slice it whenever no job waits; otherwise
            // sleep until one comes.
            let first = if self.sweep.is_some() {
                match jobs.try_recv() {
                    Ok(job) => job,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.sweep_slice();
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match jobs.blocking_recv() {
                    Some(job) => job,
                    None => break,
                }
            };
            let mut group: Vec<(Vec<PublishRequest>, Reply)> = Vec::new();
            let mut count = 0;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Publish(reqs, reply) => {
                        count += reqs.len();
                        group.push((reqs, reply));
                    }
                    Job::Sweep(done) => self.start_sweep(done),
                    Job::Probe(reply) => {
                        let _ = reply.send(self.probe());
                    }
                    Job::LimitPages(pages, reply) => {
                        let _ = reply.send(self.limit_pages(pages));
                    }
                }
                if count < MAX_GROUP {
                    next = jobs.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit_group(group);
            }
            // One slice between groups: a publish waits behind at most one.
            if self.sweep.is_some() {
                self.sweep_slice();
            }
        }
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    }

    pub(super) fn set_healthy(&self, healthy: bool) {
        let was = self.shared.healthy.swap(healthy, Ordering::AcqRel);
        if was && !healthy {
            tracing::error!(
                "the store refuses writes; /ready answers 503 until it takes them again"
            );
        } else if !was && healthy {
            tracing::info!("the store takes writes again");
        }
    }

    fn commit_group(&mut self, group: Vec<(Vec<PublishRequest>, Reply)>) {
        let before = self.books.totals;
        match self.write(&group) {
            Ok(outcomes) => {
                self.set_healthy(true);
                self.publish_totals();
                let all: Vec<Publication> = outcomes
                    .iter()
                    .flatten()
                    .filter_map(|o| o.as_ref().ok())
                    .cloned()
                    .collect();
                self.sink.deliver(&all);
                for ((_, reply), outcomes) in group.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcomes));
                }
            }
            Err(e) => {
                // The transaction rolled back: so do the totals, and cached
                // positions may be ahead of the store.
                self.books.totals = before;
                self.books.cache.clear();
                self.set_healthy(false);
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
    ) -> Result<Vec<Vec<Outcome>>, EngineError> {
        if self.books.cache.len() > MAX_CACHED_STREAMS {
            self.books.cache.clear();
        }
        // IMMEDIATE: read cursors and pending notifications are written on
        // another connection; a deferred transaction that read first would
        // fail (SQLITE_BUSY_SNAPSHOT, no busy wait) when that one committed
        // in between, where taking the write lock first waits its turn.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let mut touched: HashMap<Arc<str>, Touched> = HashMap::new();
        let mut out = Vec::with_capacity(group.len());
        for (reqs, _) in group {
            let mut outcomes = Vec::with_capacity(reqs.len());
            for req in reqs {
                outcomes.push(self.books.append(&tx, &mut touched, req)?);
            }
            out.push(outcomes);
        }
        {
            let mut save = tx
                .prepare_cached(
                    "INSERT INTO streams (stream, top, last_ts, gen) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (stream) DO UPDATE SET top = excluded.top, last_ts = excluded.last_ts",
                )
                .map_err(db_err)?;
            // Once per stream and group, as before budgets: the running total
            // learns what the trim freed from the deleted rows themselves.
            let mut trim = tx
                .prepare_cached("DELETE FROM messages WHERE stream = ?1 AND offset <= ?2 RETURNING length(CAST(data AS BLOB))")
                .map_err(db_err)?;
            for (stream, t) in &touched {
                save.execute(params![
                    &**stream,
                    t.pos.top as i64,
                    t.pos.last_ts as i64,
                    t.pos.generation as i64
                ])
                .map_err(db_err)?;
                if t.pos.top > t.size {
                    let freed = trim
                        .query_map(params![&**stream, (t.pos.top - t.size) as i64], |r| {
                            r.get::<_, i64>(0)
                        })
                        .map_err(db_err)?
                        .try_fold(0u64, |sum, n| n.map(|n| sum + n.max(0) as u64))
                        .map_err(db_err)?;
                    let totals = &mut self.books.totals;
                    totals.history_bytes = totals.history_bytes.saturating_sub(freed);
                }
            }
        }
        tx.commit().map_err(db_err)?;
        let tracked = group
            .iter()
            .zip(&out)
            .flat_map(|((reqs, _), outcomes)| reqs.iter().zip(outcomes))
            .filter(|(req, outcome)| req.undelivered_after.is_some() && outcome.is_ok())
            .count() as u64;
        self.shared.undelivered.fetch_add(tracked, Ordering::AcqRel);
        for (stream, t) in touched {
            self.books.cache.insert(stream, t.pos);
        }
        Ok(out)
    }

    /// A small write, committed and undone: whether the store takes writes.
    fn probe(&mut self) -> bool {
        let result = (|| -> rusqlite::Result<()> {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', zeroblob(?1))",
                [PROBE_BYTES as i64],
            )?;
            tx.execute("DELETE FROM meta WHERE key = 'probe'", [])?;
            tx.commit()
        })();
        if let Err(e) = &result {
            tracing::debug!(error = %e, "store probe failed");
        }
        self.set_healthy(result.is_ok());
        result.is_ok()
    }

    fn limit_pages(&mut self, pages: u64) -> u64 {
        self.conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map_or(0, |n| n.max(0) as u64)
    }

    /// Moves on to the next generation: streams created from now on take its epoch.
    pub(super) fn bump_generation(&mut self) {
        self.books.generation += 1;
        let generation = self.books.generation;
        tracing::debug!(
            generation,
            epoch = %self.books.epoch(generation),
            "new stream generation"
        );
    }

    pub(super) fn start_sweep(&mut self, done: oneshot::Sender<SweepReport>) {
        match &mut self.sweep {
            Some(run) => run.waiters.push(done),
            None => self.sweep = Some(SweepRun::new(done)),
        }
    }
}

/// A stream written in the current group.
struct Touched {
    /// Its position after the group.
    pos: Pos,
    /// Messages it keeps (`history_size`); the rest is trimmed at commit.
    size: u64,
}

/// What the writer knows beside the connection: positions, generation,
/// budget and running totals. Apart from `conn` so that a transaction on the
/// connection and these can be borrowed at once.
pub(super) struct Books {
    base_epoch: Arc<str>,
    /// The current sweep generation; new streams are created in it.
    pub(super) generation: u64,
    budget: Budget,
    pub(super) cache: HashMap<Arc<str>, Pos>,
    /// Epoch strings by generation, shared rather than formatted anew for
    /// every publication.
    epochs: HashMap<u64, Arc<str>>,
    pub(super) totals: Totals,
}

impl Books {
    fn epoch(&mut self, generation: u64) -> Arc<str> {
        if self.epochs.len() > MAX_CACHED_EPOCHS {
            self.epochs.clear();
        }
        let base = &self.base_epoch;
        self.epochs
            .entry(generation)
            .or_insert_with(|| stream_epoch(base, generation))
            .clone()
    }

    /// Where `stream` stands: written earlier in this group, cached, or in
    /// the store; `None` when it does not exist.
    fn position(
        &self,
        tx: &Transaction<'_>,
        touched: &HashMap<Arc<str>, Touched>,
        stream: &str,
    ) -> Result<Option<Pos>, EngineError> {
        if let Some(t) = touched.get(stream) {
            return Ok(Some(t.pos));
        }
        if let Some(&pos) = self.cache.get(stream) {
            return Ok(Some(pos));
        }
        tx.prepare_cached("SELECT top, last_ts, gen FROM streams WHERE stream = ?1")
            .and_then(|mut load| {
                load.query_row([stream], |r| {
                    Ok(Pos {
                        top: r.get::<_, i64>(0)? as u64,
                        last_ts: r.get::<_, i64>(1)? as u64,
                        generation: r.get::<_, i64>(2)? as u64,
                    })
                })
                .optional()
            })
            .map_err(db_err)
    }

    /// Appends one message inside the group's transaction, or refuses it
    /// (nothing written) when it would pass a budget.
    fn append(
        &mut self,
        tx: &Transaction<'_>,
        touched: &mut HashMap<Arc<str>, Touched>,
        req: &PublishRequest,
    ) -> Result<Outcome, EngineError> {
        let known = self.position(tx, touched, &req.stream)?;
        let channel = is_channel(&req.stream);
        if known.is_none() && channel && self.totals.channels >= self.budget.max_channels as u64 {
            return Ok(Err(Refusal::Channels(self.budget.max_channels)));
        }
        let pos = known.unwrap_or(Pos {
            top: 0,
            last_ts: 0,
            generation: self.generation,
        });
        let len = req.data.len() as u64;
        let offset = pos.top + 1;
        let size = req.retention.size as u64;
        let max = self.budget.max_history_bytes;
        if self.totals.history_bytes.saturating_add(len) > max {
            // Near the budget: count what trimming this stream will free
            // (its rows at or below the new cutoff, this group's included).
            // Other streams' trims of this group are not counted yet, so a
            // group may refuse a little early, never late.
            let cutoff = offset.saturating_sub(size);
            let freed = if cutoff == 0 {
                0
            } else {
                tx.prepare_cached("SELECT COALESCE(SUM(length(CAST(data AS BLOB))), 0) FROM messages WHERE stream = ?1 AND offset <= ?2")
                    .and_then(|mut sum| {
                        sum.query_row(params![&*req.stream, cutoff as i64], |r| r.get::<_, i64>(0))
                    })
                    .map_err(db_err)?
                    .max(0) as u64
            };
            if self
                .totals
                .history_bytes
                .saturating_sub(freed)
                .saturating_add(len)
                > max
            {
                return Ok(Err(Refusal::HistoryBytes(max)));
            }
        }
        let ts = next_ts(pos.last_ts);
        tx.prepare_cached("INSERT INTO messages (stream, offset, ts, expire_at, data) VALUES (?1, ?2, ?3, ?4, ?5)")
            .and_then(|mut insert| {
                insert.execute(params![
                    &*req.stream,
                    offset as i64,
                    ts as i64,
                    expire_at(ts, req.retention.ttl).min(i64::MAX as u64) as i64,
                    &*req.data
                ])
            })
            .map_err(db_err)?;
        if known.is_none() {
            self.totals.channels += u64::from(channel);
            self.totals.streams += 1;
        }
        self.totals.history_bytes += len;
        let pos = Pos {
            top: offset,
            last_ts: ts,
            generation: pos.generation,
        };
        touched.insert(req.stream.clone(), Touched { pos, size });
        let epoch = self.epoch(pos.generation);
        if let Some(key) = &req.key {
            remember_key(tx, &req.stream, key, &epoch, offset, ts)?;
        }
        if let Some(after) = req.undelivered_after {
            // In the message's transaction: a notification answered is a
            // notification watched, across a crash too.
            tx.prepare_cached(
                "INSERT OR REPLACE INTO undelivered (stream, offset, epoch, due) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    &*req.stream,
                    offset as i64,
                    &*epoch,
                    expire_at(ts, after).min(i64::MAX as u64) as i64
                ])
            })
            .map_err(db_err)?;
        }
        Ok(Ok(Publication {
            stream: req.stream.clone(),
            epoch,
            offset,
            ts,
            data: req.data.clone(),
        }))
    }
}

/// Expired idempotency keys deleted with each key stored: more than one, so
/// the table stays near what the window holds without a sweep of its own.
const KEYS_DELETED_PER_COMMIT: i64 = 64;

/// Stores an idempotency key in its message's transaction (so a repeat after
/// a restart answers the original), and deletes a few expired ones.
fn remember_key(
    tx: &Transaction<'_>,
    stream: &str,
    key: &StoredKey,
    epoch: &str,
    offset: u64,
    ts: u64,
) -> Result<(), EngineError> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO idempotency_keys (stream, key, epoch, offset, ts, expire_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            stream,
            &*key.key,
            epoch,
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
