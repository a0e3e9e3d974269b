//! The sweep, run by the writer in slices between publish groups: first the
//! expired messages (at most [`SLICE`] rows per transaction, oldest expiry
//! first), then the streams left empty (no message kept, so their last one
//! has outlived its ttl) that nobody on this node watches, [`SLICE`] stream
//! rows per transaction in key order. A publish waits behind one slice at most
//! (a few ms), however large the backlog, so neither a big expiry nor a
//! forward jump of the wall clock stalls publishing.

use rusqlite::params;
use tokio::sync::oneshot;

use super::db_err;
use super::writer::Writer;
use crate::engine::{is_channel, EngineError, SweepReport};
use crate::ids::unix_millis;

/// Rows deleted, or stream rows examined, per slice.
pub(super) const SLICE: usize = 1000;

/// A sweep in progress.
pub(super) struct SweepRun {
    /// Messages that expired by this time are deleted.
    now: i64,
    /// `None` while deleting expired messages; then the last stream key
    /// examined for removal.
    after: Option<String>,
    report: SweepReport,
    pub(super) waiters: Vec<oneshot::Sender<SweepReport>>,
}

impl SweepRun {
    pub(super) fn new(done: oneshot::Sender<SweepReport>) -> Self {
        Self {
            now: unix_millis().min(i64::MAX as u64) as i64,
            after: None,
            report: SweepReport::default(),
            waiters: vec![done],
        }
    }
}

impl Writer {
    /// Runs one slice of the sweep in progress; finishes it when nothing is left.
    pub(super) fn sweep_slice(&mut self) {
        let Some(mut run) = self.sweep.take() else {
            return;
        };
        let step = match run.after.take() {
            None => self.expire_slice(&mut run),
            Some(after) => self.remove_slice(&mut run, after),
        };
        match step {
            Ok(true) => {
                for w in run.waiters {
                    let _ = w.send(run.report);
                }
                if run.report != SweepReport::default() {
                    tracing::debug!(
                        expired = run.report.expired,
                        streams_removed = run.report.streams_removed,
                        "sweep done"
                    );
                }
            }
            Ok(false) => self.sweep = Some(run),
            Err(e) => {
                // Stop here; the next sweep starts over.
                tracing::warn!(error = %e, "sweeping the store failed");
                for w in run.waiters {
                    let _ = w.send(run.report);
                }
            }
        }
    }

    /// Deletes up to [`SLICE`] expired messages. Ok(true) when the sweep is done.
    fn expire_slice(&mut self, run: &mut SweepRun) -> Result<bool, EngineError> {
        let (n, bytes) = {
            let mut delete = self
                .conn
                .prepare_cached(
                    "DELETE FROM messages WHERE (stream, offset) IN
                       (SELECT stream, offset FROM messages WHERE expire_at <= ?1 ORDER BY expire_at LIMIT ?2)
                     RETURNING length(CAST(data AS BLOB))",
                )
                .map_err(db_err)?;
            let rows = delete
                .query_map(params![run.now, SLICE as i64], |r| r.get::<_, i64>(0))
                .map_err(db_err)?;
            let mut n = 0u64;
            let mut bytes = 0u64;
            for len in rows {
                n += 1;
                bytes += len.map_err(db_err)?.max(0) as u64;
            }
            (n, bytes)
        };
        run.report.expired += n;
        self.books.totals.history_bytes = self.books.totals.history_bytes.saturating_sub(bytes);
        self.publish_totals();
        // Then the streams, starting before the first key.
        if (n as usize) < SLICE {
            run.after = Some(String::new());
        }
        Ok(false)
    }

    /// Examines up to [`SLICE`] stream rows after `after` and removes those
    /// that are empty and unwatched. Ok(true) when the last row was examined.
    fn remove_slice(&mut self, run: &mut SweepRun, after: String) -> Result<bool, EngineError> {
        let rows: Vec<(String, u64, bool)> = {
            let mut select = self
                .conn
                .prepare_cached(
                    "SELECT s.stream, s.gen, EXISTS (SELECT 1 FROM messages m WHERE m.stream = s.stream)
                     FROM streams s WHERE s.stream > ?1 ORDER BY s.stream LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = select
                .query_map(params![after, SLICE as i64], |r| {
                    Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)?
        };
        let done = rows.len() < SLICE;
        let last = rows.last().map(|r| r.0.clone());
        let doomed: Vec<(String, u64)> = rows
            .into_iter()
            .filter(|(stream, _, has_messages)| !has_messages && !self.sink.is_watched(stream))
            .map(|(stream, generation, _)| (stream, generation))
            .collect();
        if !doomed.is_empty() {
            // A stream of the current generation could come back under the
            // very epoch it had: move on to the next generation first, in the
            // same transaction as the removal.
            let bump = doomed.iter().any(|(_, g)| *g >= self.books.generation);
            let generation = self.books.generation + u64::from(bump);
            // IMMEDIATE for the reason the publish transaction is (writer.rs).
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            {
                let mut remove = tx
                    .prepare_cached("DELETE FROM streams WHERE stream = ?1")
                    .map_err(db_err)?;
                for (stream, _) in &doomed {
                    remove.execute([stream]).map_err(db_err)?;
                }
                if bump {
                    tx.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('generation', ?1)",
                        [generation.to_string()],
                    )
                    .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)?;
            if bump {
                self.bump_generation();
            }
            for (stream, _) in &doomed {
                self.books.cache.remove(stream.as_str());
                if is_channel(stream) {
                    self.books.totals.channels = self.books.totals.channels.saturating_sub(1);
                }
                self.books.totals.streams = self.books.totals.streams.saturating_sub(1);
                // Whoever subscribed between the check and the commit may
                // hold the old epoch's offsets: they must resume.
                self.sink.stream_removed(stream);
            }
            run.report.streams_removed += doomed.len() as u64;
            self.publish_totals();
        }
        if !done {
            run.after = last;
        }
        Ok(done)
    }
}
