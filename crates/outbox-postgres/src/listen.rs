//! The `LISTEN` connection of [`WakeUp::Listen`](crate::WakeUp::Listen): a hint that new
//! messages were committed.
//!
//! Notifications only wake the relay early; its poll runs regardless, so a notification lost
//! while the connection is down costs latency, never a message. After every (re)connection the
//! relay is woken once, because commits may have happened while nobody listened.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::PgOutbox;
use crate::connect::Tls;

const RECONNECT_BASE: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Owns the background task; dropping it stops the task and closes the connection.
#[derive(Debug)]
pub(crate) struct Listener {
    wake: Arc<Notify>,
    started: AtomicBool,
    stop: CancellationToken,
    db: tokio_postgres::Config,
    tls: Tls,
    outbox: PgOutbox,
}

impl Listener {
    pub(crate) fn new(outbox: &PgOutbox, db: tokio_postgres::Config, tls: Tls) -> Self {
        Self {
            wake: Arc::new(Notify::new()),
            started: AtomicBool::new(false),
            stop: CancellationToken::new(),
            db,
            tls,
            outbox: outbox.clone(),
        }
    }

    /// Waits for a notification or `timeout`. Starts the listening task on first use (stores
    /// are made outside a runtime; waiting happens inside one).
    pub(crate) async fn wait(&self, timeout: Duration) {
        if !self.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(run(
                self.wake.clone(),
                self.stop.clone(),
                self.db.clone(),
                self.tls.clone(),
                self.outbox.clone(),
            ));
        }
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How one connection ended.
enum Ended {
    Stopped,
    Failed { was_listening: bool },
}

async fn run(
    wake: Arc<Notify>,
    stop: CancellationToken,
    db: tokio_postgres::Config,
    tls: Tls,
    outbox: PgOutbox,
) {
    let mut delay = RECONNECT_BASE;
    loop {
        match listen_once(&wake, &stop, &db, &tls, &outbox).await {
            Ended::Stopped => return,
            Ended::Failed { was_listening } => {
                if was_listening {
                    delay = RECONNECT_BASE;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

async fn listen_once(
    wake: &Notify,
    stop: &CancellationToken,
    db: &tokio_postgres::Config,
    tls: &Tls,
    outbox: &PgOutbox,
) -> Ended {
    let schema = &outbox.config().schema;
    let connect = tokio::time::timeout(
        outbox.config().connect_timeout,
        tls.connect_for_messages(db),
    );
    // The connection must be polled for LISTEN's reply and for notifications alike.
    let (client, mut messages) = tokio::select! {
        () = stop.cancelled() => return Ended::Stopped,
        connected = connect => match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(error)) => {
                tracing::warn!(%error, %schema, "outbox listener could not connect; retrying");
                return Ended::Failed { was_listening: false };
            }
            Err(_) => {
                tracing::warn!(%schema, "outbox listener connection timed out; retrying");
                return Ended::Failed { was_listening: false };
            }
        },
    };
    let listen = client.batch_execute(&outbox.sql().listen);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ended::Stopped,
            result = &mut listen, if !listening => match result {
                Ok(()) => {
                    listening = true;
                    wake.notify_one();
                }
                Err(error) => {
                    tracing::warn!(%error, %schema, "outbox listener could not LISTEN; retrying");
                    return Ended::Failed { was_listening: false };
                }
            },
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::warn!(%error, %schema, "outbox listener connection failed; reconnecting");
                    wake.notify_one();
                    return Ended::Failed { was_listening: listening };
                }
                None => {
                    tracing::warn!(%schema, "outbox listener connection closed; reconnecting");
                    wake.notify_one();
                    return Ended::Failed { was_listening: listening };
                }
            },
        }
    }
}
