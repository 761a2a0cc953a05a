#!/usr/bin/env bash
# Render on a Dask cluster into an S3 bucket, with everything on this machine: an S3 API on
# loopback (moto's server mode), a Dask scheduler and two workers. Swap in your own cluster's
# address, endpoint and credentials for a real run; the commands stay the same.
#
#   pip install -e ".[dask,s3,demo]" "moto[server]"   # or the dev extra, which has them all
#   bash examples/cluster_s3.sh                       # about a minute on 2 cores
set -euo pipefail

S3_PORT=${S3_PORT:-5555}
DASK_PORT=${DASK_PORT:-8786}
ENDPOINT="http://127.0.0.1:${S3_PORT}"
SCHEDULER="tcp://127.0.0.1:${DASK_PORT}"
STORE="s3://anomalygen-demo/synth.zarr"
WORK=$(mktemp -d)

# Credentials in the environment reach the command and the workers started from this shell;
# on a real cluster, give each worker its own (or pass -S key=... -S secret=...).
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-west-2
export AWS_EC2_METADATA_DISABLED=true  # never ask an instance-metadata endpoint

pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

moto_server -H 127.0.0.1 -p "$S3_PORT" >"$WORK/s3.log" 2>&1 &
pids+=($!)
dask scheduler --host 127.0.0.1 --port "$DASK_PORT" --no-dashboard >"$WORK/scheduler.log" 2>&1 &
pids+=($!)
dask worker "$SCHEDULER" --nworkers 2 --nthreads 1 --no-dashboard >"$WORK/workers.log" 2>&1 &
pids+=($!)

python - "$ENDPOINT" <<'EOF'
import sys, time
import s3fs
for _ in range(100):  # wait for the S3 API, then make the bucket
    try:
        fs = s3fs.S3FileSystem(endpoint_url=sys.argv[1], client_kwargs={"region_name": "us-west-2"})
        fs.mkdir("anomalygen-demo")
        break
    except ConnectionError:
        time.sleep(0.2)
else:
    sys.exit("the S3 API did not start")
EOF

anomalygen render --demo --n 256 --size 256 --shard-size 32 --out "$STORE" \
    --scheduler "$SCHEDULER" -S endpoint_url="$ENDPOINT"
anomalygen info "$STORE" -S endpoint_url="$ENDPOINT"
anomalygen verify "$STORE" -S endpoint_url="$ENDPOINT"
anomalygen preview "$STORE" -S endpoint_url="$ENDPOINT" --n 8 --out cluster_s3_preview.png
echo "preview: cluster_s3_preview.png"
