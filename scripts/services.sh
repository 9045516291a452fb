#!/usr/bin/env bash
# Makes sure PostgreSQL and NATS (with JetStream) answer, for the demo, `make run-*` and `cargo test`.
#
# Usage: scripts/services.sh [start|stop|status]
#
#   start (default)  If DATABASE_URL and NATS_URL answer, uses them (creating the database if it is
#                    missing). Otherwise starts local servers from the installed binaries, with their
#                    data under target/demo/: on the URL's port when it is free, else on a free port
#                    from 55432 (PostgreSQL) or 54222 (NATS). Idempotent: a server it started earlier
#                    is reused. Prints `export DATABASE_URL=... NATS_URL=...` on stdout (so
#                    `eval "$(scripts/services.sh)"` works) and writes the same to
#                    target/demo/services.env; everything else goes to stderr.
#   stop             Stops the servers this script started, and only those (pid files in target/demo/).
#   status           Says what answers and what this script started.
#
# Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test), NATS_URL (default
# nats://127.0.0.1:4222), SERVICES_DIR (default target/demo), SERVICES_WAIT_SECS (default 60).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO_DIR=${SERVICES_DIR:-$ROOT/target/demo}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
WAIT_SECS=${SERVICES_WAIT_SECS:-60}

PG_ROOT=$DEMO_DIR/postgres # data/ and postgres.log; owned by the server's user when we run as root
PG_PIDFILE=$DEMO_DIR/postgres.pid
PG_PORTFILE=$DEMO_DIR/postgres.port
NATS_DIR=$DEMO_DIR/nats
NATS_LOG=$DEMO_DIR/nats.log
NATS_PIDFILE=$DEMO_DIR/nats.pid
NATS_PORTFILE=$DEMO_DIR/nats.port
ENV_FILE=$DEMO_DIR/services.env

log() { printf 'services: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# --- probes -------------------------------------------------------------------------------------

tcp_open() { # host port: true when something accepts TCP connections there
	# shellcheck disable=SC2016 # $0 and $1 belong to the inner shell
	timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

free_port() { # first port from $1 on which nothing listens on 127.0.0.1
	local port=$1 i
	for ((i = 0; i < 100; i++)); do
		if ! tcp_open 127.0.0.1 "$port"; then
			echo "$port"
			return 0
		fi
		port=$((port + 1))
	done
	die "no free port in $1..$port"
}

is_local_host() {
	case $1 in 127.* | localhost | ::1 | '[::1]') return 0 ;; *) return 1 ;; esac
}

# A NATS server greets every client with one INFO line; it says whether JetStream is on.
nats_info() { # host port
	# shellcheck disable=SC2016 # $0, $1 and $line belong to the inner shell
	timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && IFS= read -r line <&3 && printf "%s\n" "$line"' \
		"$1" "$2" 2>/dev/null
}

nats_js_ok() { # host port
	local info
	info=$(nats_info "$1" "$2") || return 1
	[[ $info == INFO* && $info == *'"jetstream":true'* ]]
}

PSQL=
find_psql() { # fails when there is no psql here
	if [[ -n $PSQL ]]; then return 0; fi
	if PSQL=$(command -v psql); then return 0; fi
	PSQL=
	if (find_pg_bin 2>/dev/null) && find_pg_bin && [[ -x $PG_BIN/psql ]]; then PSQL=$PG_BIN/psql; fi
	[[ -n $PSQL ]]
}

pg_query() { # url sql: never prompts for a password, gives up after a few seconds
	PGCONNECT_TIMEOUT=3 "$PSQL" -w -X -q -tA -d "$1" -c "$2"
}

# The same server and credentials, database `postgres` (libpq lets query parameters override the path).
pg_admin_url() {
	if [[ $1 == *\?* ]]; then echo "$1&dbname=postgres"; else echo "$1?dbname=postgres"; fi
}

# True when `url` accepts our queries, after creating its database if only that was missing.
pg_usable() { # url dbname
	local err
	if ! find_psql; then
		# Without a client (e.g. PostgreSQL in Docker) all we can check is that something listens.
		(parse_pg_url "$1" && tcp_open "$PG_HOST" "$PG_PORT") || return 1
		log "psql not found: assuming that what listens there accepts $(redact "$1")"
		return 0
	fi
	err=$(pg_query "$1" 'select 1' 2>&1 >/dev/null) && return 0
	if [[ $err == *"database \"$2\" does not exist"* ]]; then
		log "creating database $2"
		pg_query "$(pg_admin_url "$1")" "CREATE DATABASE \"$2\"" >/dev/null || return 1
		pg_query "$1" 'select 1' >/dev/null 2>&1 && return 0
	fi
	err=${err%%$'\n'*}
	[[ -z $err ]] || log "PostgreSQL at $(redact "$1"): ${err#psql: error: }"
	return 1
}

redact() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

# --- URLs ---------------------------------------------------------------------------------------

parse_pg_url() {
	local re='^postgres(ql)?://(([^:@/]*)(:([^@/]*))?@)?(\[[^]]*\]|[^:/?]*)(:([0-9]+))?(/([^?]*))?(\?.*)?$'
	[[ $1 =~ $re ]] || die "DATABASE_URL is not a postgres:// URL: $(redact "$1")"
	PG_USER=${BASH_REMATCH[3]:-postgres}
	PG_HOST=${BASH_REMATCH[6]:-127.0.0.1}
	PG_PORT=${BASH_REMATCH[8]:-5432}
	PG_DB=${BASH_REMATCH[10]:-$PG_USER}
}

parse_nats_url() {
	local hostport=${1%%,*} # the first server of a list is enough to decide
	hostport=${hostport#*://}
	hostport=${hostport##*@}
	hostport=${hostport%%/*}
	if [[ $hostport =~ ^\[([^]]*)\](:([0-9]+))?$ || $hostport =~ ^([^:]*)(:([0-9]+))?$ ]]; then
		NATS_HOST=${BASH_REMATCH[1]:-127.0.0.1}
		NATS_PORT=${BASH_REMATCH[3]:-4222}
	else
		die "NATS_URL is not a nats://host:port URL: $(redact "$1")"
	fi
}

# --- processes we started -----------------------------------------------------------------------

# Prints the pid recorded in `pidfile` when that process is alive and its command line contains
# `marker` (our data directory), so a recycled pid is never mistaken for our server.
our_pid() { # pidfile marker
	local pid args
	[[ -s $1 ]] || return 1
	pid=$(<"$1") # nats-server writes its pid without a newline
	pid=${pid%%[[:space:]]*}
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	args=$(ps -o args= -p "$pid" 2>/dev/null) || return 1
	[[ $args == *"$2"* ]] || return 1
	echo "$pid"
}

alive() { # pid: true while the process runs (a zombie left for a parent to reap does not count)
	local stat
	stat=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $stat != Z* ]]
}

# --- PostgreSQL ---------------------------------------------------------------------------------

PG_BIN=
find_pg_bin() {
	if [[ -n $PG_BIN ]]; then return 0; fi
	local d candidates=()
	if command -v initdb >/dev/null; then candidates+=("$(dirname "$(command -v initdb)")"); fi
	if command -v pg_config >/dev/null; then candidates+=("$(pg_config --bindir)"); fi
	while IFS= read -r d; do candidates+=("$d"); done < <(for d in /usr/lib/postgresql/*/bin; do [[ -d $d ]] && echo "$d"; done | sort -rV)
	candidates+=(/usr/local/pgsql/bin)
	for d in "${candidates[@]}"; do
		if [[ -x $d/initdb && -x $d/pg_ctl ]]; then
			PG_BIN=$d
			return 0
		fi
	done
	die "PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL (e.g. apt-get install postgresql), or run 'make up' with Docker"
}

# PostgreSQL refuses to run as root: as root, run it as `postgres` (or `nobody`) and give that user
# the data directory.
PG_OS_USER=
as_pg_user() {
	if [[ -z $PG_OS_USER ]]; then
		"$@"
	elif command -v runuser >/dev/null; then
		runuser -u "$PG_OS_USER" -- "$@"
	else
		su -s /bin/sh "$PG_OS_USER" -c "$(printf '%q ' "$@")"
	fi
}

prepare_pg_root() {
	if ((EUID != 0)); then
		mkdir -p "$PG_ROOT"
		return 0
	fi
	if id postgres >/dev/null 2>&1; then PG_OS_USER=postgres; else PG_OS_USER=nobody; fi
	# A repository under a private home directory (e.g. /root) cannot be reached by that user: keep
	# the data in /tmp then, linked from target/demo/postgres.
	if [[ -L $PG_ROOT ]]; then PG_ROOT=$(readlink -f "$PG_ROOT"); fi
	mkdir -p "$PG_ROOT"
	chown -R "$PG_OS_USER:" "$PG_ROOT"
	if ! as_pg_user test -w "$PG_ROOT"; then
		local alt
		alt=/tmp/outbox-demo-postgres-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)
		rmdir "$PG_ROOT" 2>/dev/null || die "$PG_OS_USER cannot write $PG_ROOT: remove it, or run as a regular user"
		mkdir -p "$alt"
		chown -R "$PG_OS_USER:" "$alt"
		chmod 700 "$alt"
		ln -s "$alt" "$DEMO_DIR/postgres"
		log "$PG_OS_USER cannot reach $DEMO_DIR: PostgreSQL's data goes to $alt (linked from $DEMO_DIR/postgres)"
		PG_ROOT=$alt
	fi
}

own_pg_url() { echo "postgres://$PG_USER@127.0.0.1:$1/$PG_DB"; }

start_postgres() { # port
	local port=$1 data=$PG_ROOT/data
	if [[ ! -f $data/PG_VERSION ]]; then
		log "initializing a PostgreSQL cluster in $data"
		if ! as_pg_user "$PG_BIN/initdb" -D "$data" -U "$PG_USER" --auth=trust -E UTF8 --locale=C \
			--no-sync >"$PG_ROOT/initdb.log" 2>&1; then
			tail -n 20 "$PG_ROOT/initdb.log" >&2
			die "initdb failed (log: $PG_ROOT/initdb.log)"
		fi
		# Loopback TCP only, and no Unix socket: its compiled-in directory (/var/run/postgresql)
		# may not exist or not be writable by this user.
		printf '%s\n' '' '# Added by scripts/services.sh' "listen_addresses = '127.0.0.1'" \
			"unix_socket_directories = ''" >>"$data/postgresql.conf"
	fi
	log "starting PostgreSQL on 127.0.0.1:$port (log: $PG_ROOT/postgres.log)"
	if ! as_pg_user "$PG_BIN/pg_ctl" -D "$data" -l "$PG_ROOT/postgres.log" -o "-p $port" -w \
		-t "$WAIT_SECS" start >/dev/null; then
		tail -n 20 "$PG_ROOT/postgres.log" >&2 || true
		die "PostgreSQL did not start (log: $PG_ROOT/postgres.log)"
	fi
	head -n 1 "$data/postmaster.pid" >"$PG_PIDFILE"
	echo "$port" >"$PG_PORTFILE"
}

stop_postgres() {
	local pid data
	[[ -e $PG_PIDFILE ]] || return 0
	if [[ -L $PG_ROOT ]]; then PG_ROOT=$(readlink -f "$PG_ROOT"); fi
	data=$PG_ROOT/data
	if pid=$(our_pid "$PG_PIDFILE" "$data"); then
		find_pg_bin
		if ((EUID == 0)); then PG_OS_USER=$(stat -c %U "$data"); fi
		log "stopping PostgreSQL (pid $pid, data $data)"
		as_pg_user "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t "$WAIT_SECS" stop >/dev/null
	fi
	rm -f "$PG_PIDFILE" "$PG_PORTFILE"
}

ensure_postgres() {
	local port
	parse_pg_url "$DATABASE_URL"
	if pg_usable "$DATABASE_URL" "$PG_DB"; then
		log "PostgreSQL answers at $(redact "$DATABASE_URL")"
		return 0
	fi
	if [[ -L $PG_ROOT ]]; then PG_ROOT=$(readlink -f "$PG_ROOT"); fi
	if our_pid "$PG_PIDFILE" "$PG_ROOT/data" >/dev/null && [[ -s $PG_PORTFILE ]]; then
		port=$(<"$PG_PORTFILE")
		if pg_usable "$(own_pg_url "$port")" "$PG_DB"; then
			DATABASE_URL=$(own_pg_url "$port")
			log "PostgreSQL started earlier by this script answers at $DATABASE_URL"
			return 0
		fi
		stop_postgres
	fi
	is_local_host "$PG_HOST" ||
		die "PostgreSQL at $(redact "$DATABASE_URL") does not answer and is not on this machine: start it, or unset DATABASE_URL"
	find_pg_bin
	find_psql || die "psql not found in $PG_BIN: install the PostgreSQL client"
	port=$PG_PORT
	if tcp_open 127.0.0.1 "$port"; then
		port=$(free_port $((port == 55432 ? 55433 : 55432)))
		log "port $PG_PORT is taken by a server that does not accept $(redact "$DATABASE_URL"): using port $port"
	fi
	prepare_pg_root
	start_postgres "$port"
	DATABASE_URL=$(own_pg_url "$port")
	pg_usable "$DATABASE_URL" "$PG_DB" || die "the PostgreSQL just started does not accept $DATABASE_URL"
	log "PostgreSQL answers at $DATABASE_URL"
}

# --- NATS ---------------------------------------------------------------------------------------

start_nats() { # port
	local port=$1 bin candidate deadline=$((SECONDS + WAIT_SECS))
	bin=$(command -v nats-server || true)
	for candidate in /usr/sbin/nats-server /usr/local/bin/nats-server; do
		if [[ -z $bin && -x $candidate ]]; then bin=$candidate; fi
	done
	[[ -n $bin ]] ||
		die "nats-server not found: install it (e.g. apt-get install nats-server, or https://github.com/nats-io/nats-server/releases), or run 'make up' with Docker"
	mkdir -p "$NATS_DIR"
	rm -f "$NATS_PIDFILE"
	log "starting nats-server with JetStream on 127.0.0.1:$port (log: $NATS_LOG)"
	# setsid: a Ctrl-C in the terminal that ran us must not reach the server.
	setsid "$bin" -a 127.0.0.1 -p "$port" -js -sd "$NATS_DIR" -l "$NATS_LOG" -P "$NATS_PIDFILE" \
		</dev/null >/dev/null 2>&1 &
	until nats_js_ok 127.0.0.1 "$port"; do
		if ((SECONDS >= deadline)); then
			tail -n 20 "$NATS_LOG" >&2 || true
			die "nats-server did not answer within ${WAIT_SECS}s (log: $NATS_LOG)"
		fi
		sleep 0.1
	done
	echo "$port" >"$NATS_PORTFILE"
}

stop_nats() {
	local pid i
	[[ -e $NATS_PIDFILE ]] || return 0
	if pid=$(our_pid "$NATS_PIDFILE" "$NATS_DIR"); then
		log "stopping nats-server (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 150; i++)); do
			alive "$pid" || break
			sleep 0.1
		done
		if alive "$pid"; then
			log "nats-server (pid $pid) ignored SIGTERM for 15s: killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	rm -f "$NATS_PIDFILE" "$NATS_PORTFILE"
}

ensure_nats() {
	local port info
	parse_nats_url "$NATS_URL"
	if info=$(nats_info "$NATS_HOST" "$NATS_PORT") && [[ $info == INFO* ]]; then
		if [[ $info == *'"jetstream":true'* ]]; then
			log "NATS with JetStream answers at $(redact "$NATS_URL")"
			return 0
		fi
		log "NATS at $(redact "$NATS_URL") answers but has JetStream off: starting another one"
	fi
	if our_pid "$NATS_PIDFILE" "$NATS_DIR" >/dev/null && [[ -s $NATS_PORTFILE ]]; then
		port=$(<"$NATS_PORTFILE")
		if nats_js_ok 127.0.0.1 "$port"; then
			NATS_URL=nats://127.0.0.1:$port
			log "nats-server started earlier by this script answers at $NATS_URL"
			return 0
		fi
		stop_nats
	fi
	is_local_host "$NATS_HOST" ||
		die "NATS at $(redact "$NATS_URL") does not answer and is not on this machine: start it, or unset NATS_URL"
	port=$NATS_PORT
	if tcp_open 127.0.0.1 "$port"; then
		port=$(free_port $((port == 54222 ? 54223 : 54222)))
		log "port $NATS_PORT is taken by something that is not NATS with JetStream: using port $port"
	fi
	start_nats "$port"
	NATS_URL=nats://127.0.0.1:$port
	log "NATS with JetStream answers at $NATS_URL"
}

# --- commands -----------------------------------------------------------------------------------

cmd_start() {
	mkdir -p "$DEMO_DIR"
	ensure_postgres
	ensure_nats
	printf 'export DATABASE_URL=%q\nexport NATS_URL=%q\n' "$DATABASE_URL" "$NATS_URL" | tee "$ENV_FILE"
}

cmd_stop() {
	stop_postgres
	stop_nats
	rm -f "$ENV_FILE"
}

cmd_status() {
	local pid
	parse_pg_url "$DATABASE_URL"
	parse_nats_url "$NATS_URL"
	if find_psql && pg_query "$DATABASE_URL" 'select 1' >/dev/null 2>&1; then
		echo "PostgreSQL: answers at $(redact "$DATABASE_URL")"
	else
		echo "PostgreSQL: no answer at $(redact "$DATABASE_URL")"
	fi
	if nats_js_ok "$NATS_HOST" "$NATS_PORT"; then
		echo "NATS: JetStream answers at $(redact "$NATS_URL")"
	else
		echo "NATS: no JetStream at $(redact "$NATS_URL")"
	fi
	if [[ -L $PG_ROOT ]]; then PG_ROOT=$(readlink -f "$PG_ROOT"); fi
	if pid=$(our_pid "$PG_PIDFILE" "$PG_ROOT/data"); then
		echo "started here: PostgreSQL pid $pid on 127.0.0.1:$(cat "$PG_PORTFILE" 2>/dev/null)"
	fi
	if pid=$(our_pid "$NATS_PIDFILE" "$NATS_DIR"); then
		echo "started here: nats-server pid $pid on 127.0.0.1:$(cat "$NATS_PORTFILE" 2>/dev/null)"
	fi
	if [[ -s $ENV_FILE ]]; then echo "environment ($ENV_FILE):" && cat "$ENV_FILE"; fi
}

case ${1:-start} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
-h | --help | help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" ;;
*) die "unknown command '$1' (expected start, stop or status)" ;;
esac
