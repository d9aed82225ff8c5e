#!/bin/sh
# MLflow's tracking server for flare_ray sweeps, as cluster/docker-compose.yaml and cluster/mlflow.yaml run
# it (and tests/e2e/test_mlflow_auth.py, on localhost): basic auth on, every credential from the environment.
#
#   MLFLOW_BACKEND_STORE_URI      postgresql://mlflow@postgres:5432/mlflow (the password: PGPASSWORD)
#   MLFLOW_AUTH_DATABASE_URI      postgresql://mlflow@postgres:5432/mlflow_auth (users and permissions)
#   MLFLOW_ARTIFACTS_DESTINATION  s3://BUCKET/mlartifacts or gs://BUCKET/mlartifacts (the server's own cloud
#                                 identity writes there; clients up- and download through the server)
#   MLFLOW_AUTH_ADMIN_PASSWORD    the admin's first password (a secret; change it after, in the UI)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  a random key (a secret) that signs the auth app's sessions
#   MLFLOW_HOST (127.0.0.1), MLFLOW_PORT (5000), MLFLOW_ALLOWED_HOSTS (MLflow's default: localhost and
#   private addresses) and MLFLOW_WORKERS (4)
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?e.g. postgresql://mlflow@postgres:5432/mlflow}"
: "${MLFLOW_AUTH_DATABASE_URI:?e.g. postgresql://mlflow@postgres:5432/mlflow_auth}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?e.g. s3://BUCKET/mlartifacts}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?the admin password, from a secret}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?a random key, from a secret}"

# The shipped auth config with this deployment's user store (no credential: PGPASSWORD reaches libpq).
MLFLOW_AUTH_CONFIG_PATH=$(mktemp "${TMPDIR:-/tmp}/mlflow-auth-XXXXXX.ini")
export MLFLOW_AUTH_CONFIG_PATH
python3 - "$(dirname "$0")/basic_auth.ini" "$MLFLOW_AUTH_CONFIG_PATH" <<'PY'
import configparser, os, sys
config = configparser.ConfigParser()
config.read(sys.argv[1])
config["mlflow"]["database_uri"] = os.environ["MLFLOW_AUTH_DATABASE_URI"]
with open(sys.argv[2], "w") as f:
    config.write(f)
PY

set -- --app-name basic-auth --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-4}" --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --serve-artifacts --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then set -- "$@" --allowed-hosts "$MLFLOW_ALLOWED_HOSTS"; fi
exec "${MLFLOW:-mlflow}" server "$@"
