//! A connection's read buffer, which grows only as far as the frame being
//! read needs and goes back to its idle size once that frame is consumed,
//! and the drop guard that counts what buffers hold in a gauge.
//!
//! Most connections are idle most of the time: what each one keeps between
//! frames is what the server's memory is made of. A buffer that kept the
//! capacity of the largest frame it ever saw would let one 60 KB frame per
//! connection cost 60 KB per connection for good.

use prometheus_client::metrics::gauge::Gauge;

/// Bytes read from the socket and not yet decoded.
///
/// The storage is initialised (zeroed when it grows) so the socket can read
/// straight into it without `unsafe`; `start..end` is what is held.
#[derive(Debug)]
pub(crate) struct ReadBuffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
    idle: usize,
}

impl ReadBuffer {
    /// An `idle`-byte buffer holding `early` (bytes that came with the
    /// handshake).
    pub(crate) fn new(idle: usize, mut early: Vec<u8>) -> Self {
        let end = early.len();
        let size = end.max(idle);
        early.reserve_exact(size - end);
        early.resize(size, 0);
        Self {
            data: early,
            start: 0,
            end,
            idle,
        }
    }

    /// The bytes held.
    pub(crate) fn held(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Drops the first `n` held bytes (a decoded frame), and gives back the
    /// room a large frame took.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.data.len() > self.idle && self.end - self.start <= self.idle {
            self.compact();
            self.data.truncate(self.idle);
            self.data.shrink_to(self.idle);
        }
    }

    /// Drops everything held (input drained after a violation).
    pub(crate) fn clear(&mut self) {
        self.consume(self.end - self.start);
    }

    /// Room to read into, once the held bytes may grow to `needed` (the
    /// size of the frame being read, as the decoder says): the buffer grows
    /// to that size exactly, never to a doubling of it.
    pub(crate) fn room(&mut self, needed: usize) -> &mut [u8] {
        let needed = needed.max(self.idle);
        if self.data.len() - self.start < needed || self.end == self.data.len() {
            self.compact();
        }
        if self.data.len() < needed {
            self.data.reserve_exact(needed - self.data.len());
            self.data.resize(needed, 0);
        }
        &mut self.data[self.end..]
    }

    /// Marks `n` bytes read into [`ReadBuffer::room`] as held.
    pub(crate) fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }

    /// Bytes allocated.
    pub(crate) fn capacity(&self) -> usize {
        self.data.capacity()
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

/// Bytes one connection adds to a gauge; whatever it still adds when it is
/// dropped (a closed socket, a panic) is taken back, so the gauge cannot
/// drift.
#[derive(Debug)]
pub(crate) struct HeldBytes {
    gauge: Gauge,
    held: i64,
}

impl HeldBytes {
    pub(crate) fn new(gauge: Gauge) -> Self {
        Self { gauge, held: 0 }
    }

    /// Sets this connection's share to `bytes`.
    pub(crate) fn set(&mut self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        if bytes != self.held {
            self.gauge.inc_by(bytes - self.held);
            self.held = bytes;
        }
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.gauge.dec_by(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(b: &mut ReadBuffer, needed: usize, bytes: &[u8]) {
        let room = b.room(needed);
        room[..bytes.len()].copy_from_slice(bytes);
        b.filled(bytes.len());
    }

    #[test]
    fn grows_to_a_large_frame_and_back_to_idle_once_it_is_consumed() {
        let mut b = ReadBuffer::new(256, Vec::new());
        assert_eq!(b.capacity(), 256);
        read(&mut b, 2, &[1, 2]);
        let big = vec![7u8; 60_000];
        read(&mut b, 60_002, &big);
        assert_eq!(b.held().len(), 60_002);
        assert!(b.capacity() >= 60_002 && b.capacity() < 61_000);
        // The next frame's first bytes came in the same read.
        read(&mut b, 60_010, &[9; 8]);
        b.consume(60_002);
        assert_eq!(b.held(), &[9; 8]);
        assert_eq!(b.capacity(), 256);
    }

    #[test]
    fn keeps_what_is_held_across_compaction() {
        let mut b = ReadBuffer::new(8, b"abcdefgh".to_vec());
        b.consume(6);
        read(&mut b, 8, b"ijklmn");
        assert_eq!(b.held(), b"ghijklmn");
        assert_eq!(b.capacity(), 8);
    }

    #[test]
    fn early_bytes_larger_than_idle_shrink_once_consumed() {
        let mut b = ReadBuffer::new(16, vec![1; 100]);
        assert_eq!(b.held().len(), 100);
        b.consume(100);
        assert_eq!(b.capacity(), 16);
    }

    #[test]
    fn held_bytes_are_given_back_on_drop() {
        let gauge = Gauge::default();
        let mut a = HeldBytes::new(gauge.clone());
        let mut b = HeldBytes::new(gauge.clone());
        a.set(512);
        b.set(70_000);
        b.set(512);
        assert_eq!(gauge.get(), 1024);
        drop(a);
        assert_eq!(gauge.get(), 512);
        drop(b);
        assert_eq!(gauge.get(), 0);
    }
}
