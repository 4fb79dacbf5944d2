#!/usr/bin/env bash
# Start TensorFlow Serving on the models pushed by the pipeline.
#   serving/start_tf_serving.sh [SERVING_DIR (default artifacts/serving)] [MODEL_NAME (em3)]
# Uses `tensorflow_model_server` when it is on PATH; otherwise prints the equivalent docker
# command and, for machines with neither, how to start the local stand-in server.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
serving_dir="$(cd "${1:-artifacts/serving}" && pwd)"
model="${2:-em3}"
common=(--port=8500 --rest_api_port=8501 --enable_batching
        --enable_model_warmup --file_system_poll_wait_seconds=5)
if command -v tensorflow_model_server >/dev/null; then
  config="$(mktemp --suffix=.models.config)"
  (cd "$here/.." && "${PYTHON:-.venv/bin/python}" -m serving.write_models_config \
    --base-path "$serving_dir/$model" --name "$model" --output "$config")
  exec tensorflow_model_server "${common[@]}" --model_config_file="$config" \
    --batching_parameters_file="$here/batching_parameters.txt"
fi
cat >&2 <<MSG
tensorflow_model_server is not on PATH. With Docker:

  docker run --rm -p 8500:8500 -p 8501:8501 \\
    -v "$serving_dir:/models" -v "$here:/config" tensorflow/serving:2.16.1 \\
    ${common[*]} \\
    --model_config_file=/config/models.config \\
    --batching_parameters_file=/config/batching_parameters.txt

Without either (development, CI), the local stand-in speaks the same gRPC and REST APIs:

  python -m serving.local_server --model_name=$model --model_base_path=$serving_dir/$model \\
    --port=8500 --rest_api_port=8501 --batching_parameters_file=$here/batching_parameters.txt
MSG
exit 1
