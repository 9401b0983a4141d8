#!/usr/bin/env bash
# The event-time fault suite in full: the same test CI runs shortened
# (pipeline/tests/event_time_faults.rs), here with 60 s outages of PostgreSQL, Redis and
# RabbitMQ under 500 events/s for 150 s each, 10 s windows and the default 10 s idle timeout,
# plus events from 2100 and 1970 and a negative latency mixed in. Prints one line per scenario
# (events, windows, late, future, dead letters) and fails on the first window that is not
# exact. About 15 minutes.
#
#   benches/faults/run.sh                 # every scenario
#   FAULT_ONLY=StopPostgres benches/faults/run.sh
#   FAULT_OUTAGE=30s FAULT_LOAD=90s benches/faults/run.sh
#
# Needs the services .ci/run starts (RabbitMQ, PostgreSQL, Redis) and the permission to stop
# and start them (pg_ctlcluster, redis-server, rabbitmqctl): it stops each in turn.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pipeline-target}"
FAULT_FULL=1 CI=true cargo test -p pipeline --test event_time_faults -- --nocapture 2>&1 \
  | grep -E "events in|down for|panicked|wrong|test result"
