//! The messages the scenarios write: keyed, numbered per key, padded to the payload size.
//!
//! A payload starts with `<key index>:<n>:` where `n` counts 1, 2, 3 … per key in enqueue order,
//! so whoever reads the stream can check per-key order and spot duplicates and gaps.

use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use outbox_core::Message;
use outbox_postgres::PgOutbox;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cli::Shape;
use crate::progress::Progress;

/// Messages per `enqueue_batch` statement (and transaction) while preloading.
const PRELOAD_CHUNK: usize = 2_000;

/// The key of key index `k`.
pub(crate) fn key_name(k: u32) -> String {
    format!("k{k}")
}

/// A payload of `size` bytes for the `n`-th message of key `k`.
pub(crate) fn payload(k: u32, n: u64, size: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(size.max(24));
    buf.put_slice(format!("{k}:{n}:").as_bytes());
    buf.resize(size.max(buf.len()), b'x');
    buf.freeze()
}

/// Parses a payload made by [`payload`]: the key index and the per-key number.
pub(crate) fn parse_payload(payload: &[u8]) -> Option<(u32, u64)> {
    let mut parts = payload.splitn(3, |&b| b == b':');
    let k = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let n = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    parts.next()?;
    Some((k, n))
}

/// Hands out per-key numbers, and keys at random (seeded, so runs are comparable).
#[derive(Debug)]
pub(crate) struct Generator {
    subject: String,
    shape: Shape,
    next: Vec<u64>,
    rng: StdRng,
    /// This generator's keys are `offset + i * stride` for `i` in 0..: producers own disjoint
    /// key sets, so each key's numbers follow its producer's commit order.
    offset: u32,
    stride: u32,
}

impl Generator {
    /// A generator over every key.
    pub(crate) fn new(subject: &str, shape: Shape, seed: u64) -> Self {
        Self::partition(subject, shape, seed, 0, 1)
    }

    /// A generator over the keys `offset, offset + stride, …` below `shape.keys`.
    pub(crate) fn partition(
        subject: &str,
        shape: Shape,
        seed: u64,
        offset: u32,
        stride: u32,
    ) -> Self {
        Self {
            subject: subject.to_owned(),
            shape,
            next: vec![0; shape.keys as usize],
            rng: StdRng::seed_from_u64(seed),
            offset,
            stride: stride.max(1),
        }
    }

    /// Keys this generator draws from.
    fn own_keys(&self) -> u32 {
        self.shape
            .keys
            .saturating_sub(self.offset)
            .div_ceil(self.stride)
            .max(1)
    }

    /// The next message, of a random key of this generator.
    pub(crate) fn message(&mut self) -> anyhow::Result<Message> {
        let i = self.rng.random_range(0..self.own_keys());
        let k = (self.offset + i * self.stride).min(self.shape.keys - 1);
        let slot = &mut self.next[k as usize];
        *slot += 1;
        let message = Message::builder(self.subject.as_str())
            .key(key_name(k))
            .payload(payload(k, *slot, self.shape.payload))
            .build()?;
        Ok(message)
    }
}

/// Enqueues `n` messages with `enqueue_batch`, a chunk per transaction, on one connection (so
/// that `seq` order is the order of per-key numbers).
pub(crate) async fn preload(
    client: &mut tokio_postgres::Client,
    outbox: &PgOutbox,
    generator: &mut Generator,
    n: u64,
    progress: &Progress,
) -> anyhow::Result<()> {
    let mut left = n;
    let mut chunk = Vec::with_capacity(PRELOAD_CHUNK);
    while left > 0 {
        chunk.clear();
        let size = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(PRELOAD_CHUNK);
        for _ in 0..size {
            chunk.push(generator.message()?);
        }
        let tx = client.transaction().await?;
        outbox
            .enqueue_batch(&tx, &chunk)
            .await
            .context("preloading the outbox")?;
        tx.commit().await?;
        left -= size as u64;
        progress.inc(size as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_have_the_requested_size() {
        let p = payload(17, 12345, 256);
        assert_eq!(p.len(), 256);
        assert_eq!(parse_payload(&p), Some((17, 12345)));
        assert_eq!(parse_payload(b"garbage"), None);
    }

    #[test]
    fn partitions_are_disjoint_and_numbered_per_key() {
        let shape = Shape {
            keys: 10,
            payload: 32,
        };
        let mut a = Generator::partition("s", shape, 1, 0, 3);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..100 {
            let m = a.message().unwrap();
            let (k, n) = parse_payload(m.payload()).unwrap();
            assert_eq!(k % 3, 0);
            assert_eq!(m.key(), Some(key_name(k).as_str()));
            let last = seen.insert(k, n).unwrap_or(0);
            assert_eq!(n, last + 1);
        }
    }
}
