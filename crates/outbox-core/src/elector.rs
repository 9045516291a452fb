//! The [`Elector`] trait: one relay at a time.

use async_trait::async_trait;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::Error;

/// Proof that this instance leads, until [`lost`](Leadership::lost) resolves.
///
/// Dropping it resigns: the elector releases leadership so a standby can take over.
#[derive(Debug)]
pub struct Leadership {
    lost: CancellationToken,
    _resign: DropGuard,
}

/// The elector's side of one [`Leadership`]: how it reports a loss and learns of a resignation.
#[derive(Clone, Debug)]
pub struct Term {
    lost: CancellationToken,
    resigned: CancellationToken,
}

impl Leadership {
    /// A new term of leadership, and the elector's handle on it.
    pub fn new() -> (Leadership, Term) {
        let lost = CancellationToken::new();
        let resigned = CancellationToken::new();
        let leadership = Leadership {
            lost: lost.clone(),
            _resign: resigned.clone().drop_guard(),
        };
        (leadership, Term { lost, resigned })
    }

    /// Resolves when leadership was lost (session gone, lock taken away).
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    /// Whether leadership was lost.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }
}

impl Term {
    /// Tells the leader it lost leadership; it stops relaying at once.
    pub fn lose(&self) {
        self.lost.cancel();
    }

    /// Whether the leader gave up leadership (dropped its [`Leadership`]).
    pub fn is_resigned(&self) -> bool {
        self.resigned.is_cancelled()
    }

    /// Resolves when the leader gave up leadership.
    pub async fn resigned(&self) {
        self.resigned.cancelled().await;
    }

    /// Whether the term is over, by loss or resignation.
    pub fn is_over(&self) -> bool {
        self.lost.is_cancelled() || self.resigned.is_cancelled()
    }
}

/// Decides which instance relays.
///
/// # Contract
///
/// - [`campaign`](Elector::campaign) returns only while no other instance holds leadership, and
///   keeps trying until it wins (errors are for failures worth logging, such as an unreachable
///   database; the relay calls `campaign` again after a backoff).
/// - The elector watches its hold continuously and reports a loss through the [`Term`] at once.
/// - When a [`Leadership`] is dropped, leadership is released promptly.
#[async_trait]
pub trait Elector: Send + Sync + 'static {
    /// Waits until this instance leads.
    async fn campaign(&self) -> Result<Leadership, Error>;
}

/// An elector for a single relay: it always leads at once and never loses.
///
/// Use it only where no other relay can run against the same store.
#[derive(Clone, Copy, Debug, Default)]
pub struct Standalone;

#[async_trait]
impl Elector for Standalone {
    async fn campaign(&self) -> Result<Leadership, Error> {
        Ok(Leadership::new().0)
    }
}
