//! Run with:
//!
//! ```text
//! cargo run -p example -- --role leader                  # HTTP on :8080, relays while it leads
//! cargo run -p example -- --role replica --port 8081     # HTTP only, never relays
//! cargo run -p example -- --port 0 --orders 10000 --customers 50 --rate 500   # load, then exit
//! curl -i -X POST localhost:8080/order -d '{"name": "book", "total": 1200, "customer_id": "alice"}'
//! curl -i localhost:8080/health
//! curl -i localhost:8080/ready
//! curl -s localhost:8080/metrics
//! ```
//!
//! An orders service (DESIGN.md section 6). Each order is one PostgreSQL transaction: it locks or
//! creates the customer's row (whose counter gives the order its per-customer `seq`), inserts the
//! order, and enqueues an `orders.created` event keyed by the customer id in the outbox. A
//! `--role leader` instance campaigns for leadership (a PostgreSQL advisory lock) and, while it
//! leads, relays the outbox to the JetStream stream `ORDERS` (subjects `orders.>`, created if
//! missing, duplicate window 2 min). `--role replica` (the default, as in the original example)
//! never relays.
//!
//! Settings: `--database-url`/`DATABASE_URL` (alias `--dsn`), `--nats-url`/`NATS_URL` (alias
//! `--natsdsn`), `--role leader|replica` (`--leader` means `--role leader`), `--port` (0: no
//! HTTP), `--orders N --customers K --rate R --concurrency C` (built-in load generator),
//! `--schema` (outbox schema), `--app-schema` (customers and orders tables), `--stream` and
//! `--subject-prefix` (to isolate test runs), `--metrics-port`/`METRICS_PORT` (a listener serving
//! only `GET /metrics`; 0: none). PostgreSQL TLS and passwords come from the URL and libpq's
//! variables (`?sslmode=verify-full&sslrootcert=...`, `PGPASSWORD`, `PGPASSFILE`); NATS
//! credentials and TLS from `--nats-creds`, `--nats-nkey`, `--nats-token`, `--nats-user` with
//! `--nats-password`, `--nats-tls`, `--nats-ca`, `--nats-cert` with `--nats-key` (or their
//! `NATS_*` variables); no secret is ever logged. `RUST_LOG` sets the log filter (default `info`);
//! logs go to stderr.
//!
//! Exit codes: 0 after SIGINT/SIGTERM (the relay drains first) or when a replica's `--orders`
//! are all committed; 2 for bad input or a feature missing from the build (one line on stderr);
//! 1 for a failure the service cannot recover from (port taken, database refusing the login).
//! Unreachable services are retried with backoff and logged, never fatal.
//!
//! Tracing: a `traceparent` (and `tracestate`) header of `POST /order` is stored on the order's
//! event and reaches its consumers as NATS headers; an order without one starts a new trace. The
//! trace id is in the response and in the `order placed` log line.
//!
//! Features: `postgres` (needed by every role), `nats` (needed by `--role leader`), and `otel`
//! (off by default): OpenTelemetry spans exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set.

mod cli;

#[cfg(feature = "postgres")]
mod app;
#[cfg(feature = "postgres")]
mod http;
#[cfg(feature = "postgres")]
mod load;
#[cfg(feature = "postgres")]
mod metrics;
#[cfg(feature = "postgres")]
mod orders;
#[cfg(all(feature = "postgres", feature = "nats"))]
mod relay;
#[cfg(feature = "postgres")]
mod report;
#[cfg(feature = "postgres")]
mod retry;
mod telemetry;

use std::process::ExitCode;

fn main() -> ExitCode {
    let settings = match cli::parse() {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    if let Err(missing) = check_features(settings.role) {
        return cli::usage_error(&missing);
    }
    let _telemetry = telemetry::init();
    run(settings)
}

/// Says which cargo feature this build lacks for `role`, if any.
fn check_features(role: cli::Role) -> Result<(), String> {
    if !cfg!(feature = "postgres") {
        return Err(
            "this build of example lacks the `postgres` feature, which every role needs; \
             rebuild with `--features postgres`"
                .to_owned(),
        );
    }
    if role == cli::Role::Leader && !cfg!(feature = "nats") {
        return Err(
            "--role leader needs the `nats` feature, which this build lacks; rebuild with \
             `--features nats` or run --role replica"
                .to_owned(),
        );
    }
    Ok(())
}

#[cfg(feature = "postgres")]
fn run(settings: cli::Settings) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("exiting: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "postgres"))]
fn run(_settings: cli::Settings) -> ExitCode {
    // check_features() refused this build before.
    ExitCode::from(cli::EXIT_USAGE)
}
