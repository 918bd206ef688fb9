#!/usr/bin/env bash
# Prefect and MLflow UIs on 127.0.0.1 (`make ui`). When either server exits (a port already
# taken, a crash) or this script is stopped (Ctrl-C, TERM), both servers are stopped: none
# is left listening behind the user's back.
#
# Environment: BIN (the virtualenv's bin, default .venv/bin), PREFECT_PORT (4200),
# MLFLOW_PORT (5000). MLflow's store is mlflow.db and mlartifacts/ in the current folder.
set -u

bin=${BIN:-.venv/bin}
prefect_port=${PREFECT_PORT:-4200}
mlflow_port=${MLFLOW_PORT:-5000}
root=$PWD
pids=()

# Job control puts each server in its own process group, so stopping one stops the workers
# it started too (uvicorn, gunicorn), and a terminal's Ctrl-C reaches only this script.
set -m

stop() {
    trap - EXIT INT TERM
    exec 2>/dev/null  # only bash's "Terminated" job notices; the servers keep their own stderr
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null
    done
    for _ in $(seq 50); do  # up to 10 s for a clean shutdown, then KILL
        local alive=0
        for pid in "${pids[@]}"; do
            kill -0 -- "-$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && return
        sleep 0.2
    done
    for pid in "${pids[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null
    done
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$bin/prefect" server start --host 127.0.0.1 --port "$prefect_port" &
pids+=($!)
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$bin/mlflow" ui --host 127.0.0.1 --port "$mlflow_port" \
    --backend-store-uri "sqlite:///$root/mlflow.db" --default-artifact-root "$root/mlartifacts" &
pids+=($!)

wait -n
status=$?
echo "ui: a server exited (status $status); stopping the other" >&2
# One server alone is not what `make ui` is for: even a clean exit (MLflow exits 0 when its
# port is taken) is a failure.
[ "$status" = 0 ] && status=1
exit "$status"
