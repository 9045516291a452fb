//! The Prometheus export of the orders service against the real PostgreSQL and NATS: a leader
//! relays orders placed over HTTP, and both `/metrics` endpoints (the HTTP port and
//! `--metrics-port`) report what happened.
#![cfg(all(feature = "postgres", feature = "nats"))]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{Env, exchange, free_port, http, http_json};

const START: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(30);
const ORDERS: usize = 200;

/// One sample of a scrape: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape in the Prometheus text format.
#[derive(Debug, Default)]
struct Scrape {
    /// `# TYPE` of each metric family.
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the text format; panics, with the line, on anything malformed.
    fn parse(text: &str) -> Self {
        let mut scrape = Scrape::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if words.next() == Some("TYPE") {
                    let name = words.next().expect("a TYPE names its metric");
                    let kind = words.next().expect("a TYPE gives its kind");
                    let previous = scrape.types.insert(name.to_owned(), kind.to_owned());
                    assert!(previous.is_none(), "two TYPE lines for {name}");
                }
                continue;
            }
            scrape.samples.push(parse_sample(line));
        }
        scrape
    }

    /// The value of the single sample `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut found = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == labels);
        let sample = found.next()?;
        assert!(found.next().is_none(), "{name}{labels:?} twice");
        Some(sample.value)
    }

    /// Every sample named `name`, whatever its labels.
    fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    fn kind(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name: {line}"
    );
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let mut key = String::new();
        loop {
            let (i, c) = chars
                .next()
                .unwrap_or_else(|| panic!("unterminated labels: {line}"));
            match c {
                '}' => {
                    rest = &after[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars
                            .next()
                            .unwrap_or_else(|| panic!("unterminated label value: {line}"));
                        match c {
                            '"' => break,
                            '\\' => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(c @ ('\\' | '"')) => value.push(c),
                                other => panic!("bad escape {other:?}: {line}"),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().unwrap_or_else(|| panic!("no value: {line}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|e| panic!("bad value {v:?} ({e}): {line}")),
    };
    // An optional timestamp may follow; nothing else.
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .unwrap_or_else(|e| panic!("bad timestamp ({e}): {line}"));
    }
    assert!(fields.next().is_none(), "trailing fields: {line}");
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

#[test]
fn the_parser_reads_the_text_format() {
    let scrape = Scrape::parse(
        "# HELP a_total Things.\n# TYPE a_total counter\na_total 3\n\
         b{reason=\"x\\\"y\",le=\"+Inf\"} 1.5 1700000000\nc +Inf\n",
    );
    assert_eq!(scrape.kind("a_total"), Some("counter"));
    assert_eq!(scrape.value("a_total", &[]), Some(3.0));
    assert_eq!(
        scrape.value("b", &[("reason", "x\"y"), ("le", "+Inf")]),
        Some(1.5)
    );
    assert_eq!(scrape.value("c", &[]), Some(f64::INFINITY));
    assert_eq!(scrape.value("b", &[]), None);
}

/// `GET /metrics` on `port`: the content type and the parsed body.
async fn scrape(port: u16) -> (String, Scrape) {
    let response = exchange(
        port,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("bad response: {response}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (content_type, Scrape::parse(body))
}

/// Scrapes `port` until `done` holds, or panics after `timeout` with the last scrape.
async fn scrape_until(port: u16, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, scraped) = scrape(port).await;
        if done(&scraped) {
            return scraped;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}; last scrape: {scraped:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks a histogram: cumulative buckets that end in `+Inf` = `_count`; returns
/// (`_count`, `_sum`).
fn histogram(scrape: &Scrape, name: &str) -> (f64, f64) {
    assert_eq!(scrape.kind(name), Some("histogram"), "TYPE of {name}");
    let count = scrape
        .value(&format!("{name}_count"), &[])
        .unwrap_or_else(|| panic!("no {name}_count"));
    let sum = scrape
        .value(&format!("{name}_sum"), &[])
        .unwrap_or_else(|| panic!("no {name}_sum"));
    let mut buckets: Vec<(f64, f64)> = scrape
        .all(&format!("{name}_bucket"))
        .iter()
        .map(|s| {
            let le = s.labels.get("le").expect("a bucket has `le`");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("numeric `le`")
            };
            (le, s.value)
        })
        .collect();
    assert!(buckets.len() >= 2, "{name}: buckets {buckets:?}");
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in buckets.windows(2) {
        assert!(
            pair[0].1 <= pair[1].1,
            "{name}: not cumulative: {buckets:?}"
        );
    }
    assert_eq!(
        buckets.last().copied(),
        Some((f64::INFINITY, count)),
        "{name}: the +Inf bucket is the count"
    );
    (count, sum)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_exports_what_it_relayed_on_both_ports() {
    let env = Env::new().await;
    let (port, metrics_port) = (free_port(), free_port());
    let mut leader = env.start_with(
        "leader",
        &[
            "--role",
            "leader",
            "--port",
            &port.to_string(),
            "--backlog-interval-ms",
            "100",
        ],
        &[("METRICS_PORT", &metrics_port.to_string())],
    );
    leader.wait_for_line("metrics listening", START).await;
    leader.wait_for_line("became leader", START).await;
    leader.wait_for_line("HTTP listening", START).await;

    // The metrics port serves /metrics and nothing else.
    let (status, body) = http_json(metrics_port, "GET", "/nope", None).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = http(metrics_port, "POST", "/metrics", Some("{}")).await;
    assert_eq!(status, 405);

    // Orders over HTTP, eight at a time.
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        tasks.spawn(async move {
            for i in (worker..ORDERS).step_by(8) {
                let order = format!(
                    r#"{{"name": "item {i}", "total": {i}, "customer_id": "customer-{}"}}"#,
                    i % 10
                );
                let (status, body) = http_json(port, "POST", "/order", Some(&order)).await;
                assert_eq!(status, 201, "{body}");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("order worker");
    }
    let messages = env
        .nats
        .wait_for_stream(ORDERS, Duration::from_secs(60))
        .await;
    assert_eq!(messages.len(), ORDERS);

    // The backlog gauges are samples: wait for one taken after the drain.
    let n = ORDERS as f64;
    let settled = scrape_until(metrics_port, "drained", |s| {
        s.value("outbox_messages_published_total", &[]) == Some(n)
            && s.value("outbox_pending_messages", &[]) == Some(0.0)
            && s.value("outbox_lag_seconds", &[]) == Some(0.0)
    })
    .await;
    let (content_type, on_metrics_port) = scrape(metrics_port).await;
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let (content_type, on_http_port) = scrape(port).await;
    assert!(content_type.starts_with("text/plain"), "{content_type}");

    for scraped in [&settled, &on_metrics_port, &on_http_port] {
        assert_eq!(
            scraped.kind("outbox_messages_published_total"),
            Some("counter")
        );
        assert_eq!(
            scraped.value("outbox_messages_published_total", &[]),
            Some(n)
        );
        assert_eq!(scraped.kind("outbox_leader"), Some("gauge"));
        assert_eq!(scraped.value("outbox_leader", &[]), Some(1.0));
        assert!(
            scraped
                .value("outbox_leadership_changes_total", &[])
                .is_some_and(|v| v >= 1.0),
            "{:?}",
            scraped.all("outbox_leadership_changes_total")
        );
        assert_eq!(scraped.value("outbox_pending_messages", &[]), Some(0.0));
        assert_eq!(scraped.value("outbox_lag_seconds", &[]), Some(0.0));
        // Nothing failed, was retried or was a duplicate: those counters are exported at zero.
        for name in [
            "outbox_messages_retried_total",
            "outbox_messages_dead_lettered_total",
            "outbox_messages_duplicate_total",
        ] {
            assert_eq!(scraped.kind(name), Some("counter"), "{name}");
            assert_eq!(scraped.value(name, &[]), Some(0.0), "{name}");
        }
        for reason in ["transient", "permanent", "unavailable"] {
            assert_eq!(
                scraped.value("outbox_publish_failures_total", &[("reason", reason)]),
                Some(0.0),
                "{reason}"
            );
        }

        let (count, sum) = histogram(scraped, "outbox_publish_latency_seconds");
        assert_eq!(count, n, "one latency per acknowledged message");
        assert!(sum > 0.0, "latencies add up to {sum}");
        let (claims, claimed) = histogram(scraped, "outbox_batch_size");
        assert!(claims >= 1.0, "{claims} claims");
        assert_eq!(claimed, n, "every message claimed once");

        // The service's own series.
        assert_eq!(scraped.value("orders_created_total", &[]), Some(n));
        assert!(
            scraped
                .value("http_responses_total", &[("status", "201")])
                .is_some_and(|v| v == n),
            "{:?}",
            scraped.all("http_responses_total")
        );
    }
    // The two ports render one recorder.
    assert_eq!(
        on_metrics_port.value("outbox_publish_latency_seconds_sum", &[]),
        on_http_port.value("outbox_publish_latency_seconds_sum", &[])
    );

    leader.signal("TERM");
    assert_eq!(leader.wait_exit(EXIT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_metrics_port_fails_at_startup() {
    let env = Env::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let metrics_port = taken.local_addr().expect("address").port().to_string();
    let mut replica = env.start(
        "replica",
        &[
            "--role",
            "replica",
            "--host",
            "127.0.0.1",
            "--port",
            &free_port().to_string(),
            "--metrics-port",
            &metrics_port,
        ],
    );
    assert_eq!(replica.wait_exit(EXIT).await.code(), Some(1));
    let logs = replica.logs();
    assert!(
        logs.contains(&format!("cannot listen on 127.0.0.1:{metrics_port}")),
        "{logs}"
    );
    drop(taken);
}
