#!/usr/bin/env bash
# The end-to-end demo behind `make demo`:
#   1. scripts/services.sh: PostgreSQL and NATS with JetStream (reused if they answer, else started
#      under target/demo/);
#   2. builds `example` and `subscriber` (release);
#   3. starts a leader (`example --role leader`), logs in target/demo/leader.log, and waits until it
#      answers /health and the ORDERS stream exists;
#   4. starts `subscriber --new --expect N` and waits until its consumer exists on the stream, so it
#      counts exactly the messages of this run, whatever earlier runs left in ORDERS;
#   5. runs a replica producer (`example --role replica --port 0 --orders N --customers K`), which
#      exits 0 once all N orders are committed;
#   6. waits for the subscriber (N distinct messages, no per-key order violation), stops the leader
#      with SIGTERM and checks that it exits 0;
#   7. ends with the subscriber's summary. Exits non-zero if any step failed.
#
# Environment: DEMO_ORDERS (5000), DEMO_CUSTOMERS (50), DEMO_LEADER_PORT (8080), DEMO_TIMEOUT
# (subscriber --timeout, 120 s), DATABASE_URL / NATS_URL (see scripts/services.sh).
# The servers stay up afterwards: `scripts/services.sh stop` stops those it started.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DEMO_DIR=${SERVICES_DIR:-$ROOT/target/demo}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
ORDERS=${DEMO_ORDERS:-5000}
CUSTOMERS=${DEMO_CUSTOMERS:-50}
LEADER_PORT=${DEMO_LEADER_PORT:-8080}
TIMEOUT=${DEMO_TIMEOUT:-120}
STREAM=ORDERS
READY_SECS=60

step() { printf '\n==> %s\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
show_log() { # file: its last lines, indented
	printf -- '--- last lines of %s\n' "$1" >&2
	tail -n "${2:-20}" "$1" 2>/dev/null | sed 's/^/    /' >&2 || true
}
fail() {
	printf '\ndemo: FAILED: %s\n' "$*" >&2
	exit 1
}

alive() { # pid: running (our exited children stay zombies until waited for: they do not count)
	local stat
	stat=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $stat != Z* ]]
}

# Stops a background process of ours: SIGTERM, then SIGKILL after `grace` seconds. Returns its
# exit status (or 137 when it had to be killed).
stop_process() { # pid grace
	local pid=$1 grace=$2 i rc=0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < grace * 10; i++)); do
		alive "$pid" || break
		sleep 0.1
	done
	if alive "$pid"; then
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || rc=$?
	return "$rc"
}

leader_pid=
subscriber_pid=
cleanup() {
	local pid
	for pid in $subscriber_pid $leader_pid; do
		if alive "$pid"; then stop_process "$pid" 10 || true; fi
	done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- NATS and HTTP probes over bash's /dev/tcp (no client tools needed) ----------------------------

parse_nats_url() {
	local u=${NATS_URL%%,*}
	u=${u#*://}
	NATS_USERINFO=
	if [[ $u == *@* ]]; then NATS_USERINFO=${u%%@*}; fi
	u=${u##*@}
	u=${u%%/*}
	NATS_HOST=${u%:*}
	NATS_PORT=${u##*:}
	if [[ $u != *:* ]]; then NATS_PORT=4222; fi
	NATS_HOST=${NATS_HOST:-127.0.0.1}
}

# One JetStream API request over the NATS text protocol; prints the JSON reply (one line).
js_api() { # subject
	local connect='{"verbose":false,"pedantic":false'
	if [[ -n $NATS_USERINFO ]]; then
		connect+=",\"user\":\"${NATS_USERINFO%%:*}\",\"pass\":\"${NATS_USERINFO#*:}\""
	fi
	connect+='}'
	# shellcheck disable=SC2016 # the variables belong to the inner shell
	timeout 5 bash -c '
		exec 3<>"/dev/tcp/$0/$1" || exit 1
		IFS= read -r line <&3 || exit 1
		printf "CONNECT %s\r\nSUB _INBOX.outbox-demo 1\r\nPUB %s _INBOX.outbox-demo 0\r\n\r\n" "$2" "$3" >&3
		while IFS= read -r line <&3; do
			case $line in
			MSG*) IFS= read -r payload <&3 && printf "%s\n" "${payload%$'"'\r'"'}" && exit 0 ;;
			-ERR*) printf "%s\n" "$line" >&2 && exit 1 ;;
			esac
		done
		exit 1' "$NATS_HOST" "$NATS_PORT" "$connect" "$1" 2>/dev/null
}

# The names of the stream's consumers, one a line; fails while the stream does not exist. Names, not
# a count: an earlier run's ephemeral consumer may vanish while ours appears.
stream_consumers() {
	local reply names
	reply=$(js_api "\$JS.API.CONSUMER.NAMES.$STREAM") || return 1
	[[ $reply == *'"consumers":'* && $reply != *'"error":'* ]] || return 1
	names=$(grep -o '"consumers":\[[^]]*\]' <<<"$reply") || return 0 # null: no consumers
	names=${names#*[}
	names=${names%]}
	[[ -z $names ]] || tr ',' '\n' <<<"$names" | tr -d '"'
}

tcp_open() { # port: true when something listens on 127.0.0.1:port
	# shellcheck disable=SC2016 # $0 belongs to the inner shell
	timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

http_get() { # port path: prints the response (HTTP/1.0: the server closes the connection)
	# shellcheck disable=SC2016 # the variables belong to the inner shell
	timeout 3 bash -c '
		exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
		printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$1" >&3
		cat <&3' "$1" "$2" 2>/dev/null
}

# --- the demo -----------------------------------------------------------------------------------

started=$(now)
mkdir -p "$DEMO_DIR"

step "services"
bash scripts/services.sh >/dev/null
# shellcheck source=/dev/null # written by scripts/services.sh
. "$DEMO_DIR/services.env"
export DATABASE_URL NATS_URL
echo "DATABASE_URL=$DATABASE_URL"
echo "NATS_URL=$NATS_URL"
parse_nats_url

step "building example and subscriber (release)"
t=$(now)
cargo build --release -p example -p subscriber
echo "built in $(since "$t")s"

step "starting the leader on port $LEADER_PORT (log: $DEMO_DIR/leader.log)"
# Whatever answers there already would pass for the leader's /health.
if [[ $LEADER_PORT != 0 ]] && tcp_open "$LEADER_PORT"; then
	fail "port $LEADER_PORT is in use: free it or set DEMO_LEADER_PORT"
fi
"$BIN/example" --role leader --port "$LEADER_PORT" >"$DEMO_DIR/leader.log" 2>&1 &
leader_pid=$!
t=$(now)
health=
healthy=
deadline=$((SECONDS + READY_SECS))
while :; do
	if ! alive "$leader_pid"; then
		show_log "$DEMO_DIR/leader.log"
		fail "the leader exited during startup (is port $LEADER_PORT free? set DEMO_LEADER_PORT)"
	fi
	if [[ $LEADER_PORT != 0 && -z $healthy ]]; then
		response=$(http_get "$LEADER_PORT" /health || true)
		if [[ $response == HTTP/1.?' 200'* ]]; then
			healthy=1
			health=$(tr -d '\r' <<<"$response" | awk 'body { print } /^$/ { body = 1 }' | tr '\n' ' ')
		fi
	fi
	if [[ $LEADER_PORT == 0 || -n $healthy ]] && stream_consumers >/dev/null; then break; fi
	if ((SECONDS >= deadline)); then
		show_log "$DEMO_DIR/leader.log"
		fail "after ${READY_SECS}s the leader does not answer /health or stream $STREAM does not exist on $NATS_URL"
	fi
	sleep 0.1
done
echo "leader ready in $(since "$t")s${health:+; GET /health: ${health% }}"

step "starting the subscriber: --new --expect $ORDERS (log: $DEMO_DIR/subscriber.log)"
consumers_before=$(stream_consumers) || fail "cannot list the consumers of stream $STREAM on $NATS_URL"
"$BIN/subscriber" --new --expect "$ORDERS" --timeout "$TIMEOUT" --quiet >"$DEMO_DIR/subscriber.log" 2>&1 &
subscriber_pid=$!
# Its consumer must exist before the first order commits, or it would miss messages.
deadline=$((SECONDS + READY_SECS))
while :; do
	if ! alive "$subscriber_pid"; then
		show_log "$DEMO_DIR/subscriber.log"
		fail "the subscriber exited before its consumer appeared on stream $STREAM"
	fi
	consumers=$(stream_consumers || true)
	if [[ -n $consumers ]] && grep -qvxF -e "$consumers_before" <<<"$consumers"; then break; fi
	if ((SECONDS >= deadline)); then
		show_log "$DEMO_DIR/subscriber.log"
		fail "after ${READY_SECS}s the subscriber's consumer has not appeared on stream $STREAM"
	fi
	sleep 0.1
done
echo "subscriber consuming"

step "producing $ORDERS orders over $CUSTOMERS customers with a replica (log: $DEMO_DIR/replica.log)"
t_produce=$(now)
if ! "$BIN/example" --role replica --port 0 --orders "$ORDERS" --customers "$CUSTOMERS" \
	>"$DEMO_DIR/replica.log" 2>&1; then
	show_log "$DEMO_DIR/replica.log"
	fail "the replica producer failed"
fi
produce_secs=$(since "$t_produce")
echo "$ORDERS orders committed in ${produce_secs}s"

step "waiting for the subscriber (timeout ${TIMEOUT}s)"
failures=()
subscriber_rc=0
wait "$subscriber_pid" || subscriber_rc=$?
subscriber_pid=
deliver_secs=$(since "$t_produce")
if ((subscriber_rc == 0)); then
	echo "all $ORDERS messages arrived, in order per key, ${deliver_secs}s after the first order" \
		"($(awk -v n="$ORDERS" -v s="$deliver_secs" 'BEGIN { printf "%.0f", n / (s > 0 ? s : 1) }') messages/s end to end)"
else
	failures+=("subscriber exited with $subscriber_rc (1: order violation or timeout)")
fi

step "stopping the leader (SIGTERM)"
leader_rc=0
stop_process "$leader_pid" 30 || leader_rc=$?
leader_pid=
if ((leader_rc == 0)); then
	echo "leader exited 0"
else
	show_log "$DEMO_DIR/leader.log"
	failures+=("leader exited with $leader_rc after SIGTERM (expected 0)")
fi
grep -i 'leader' "$DEMO_DIR/leader.log" | head -n 3 | sed 's/^/    leader.log: /' || true

echo
echo "demo took $(since "$started")s; servers still running (scripts/services.sh status | stop)"

step "subscriber summary ($DEMO_DIR/subscriber.log)"
tail -n 40 "$DEMO_DIR/subscriber.log"
if ((${#failures[@]} > 0)); then
	printf 'demo: FAILED: %s\n' "${failures[@]}" >&2
	exit 1
fi
echo "demo: OK"
