#!/usr/bin/env bash
# The main job: set up (idempotent), train the default specs on embedded data (no files needed), export each with a
# parity proof, store it in the BentoML model store, write example inputs, print curl commands, serve on $PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PORT=${PORT:-3000}
DEFAULT_SPECS=(specs/digits_cnn.yaml specs/shapes_fcn.yaml specs/sine_forecaster.yaml specs/char_gru_demo.yaml
               specs/text_demo.yaml)
.venv/bin/specserve validate specs/*.yaml
.venv/bin/specserve run "${DEFAULT_SPECS[@]}" --runs runs/demo
.venv/bin/python scripts/write_samples.py runs/samples
URL="http://localhost:$PORT"
cat <<TXT

Serving the stored models of service/serving.yaml at $URL (Swagger UI at $URL/, demo page at $URL/demo/).
Once it says it is ready, try:

  curl -s -F images=@runs/samples/digit.png -F k=3 $URL/classify
  curl -s -F image=@runs/samples/shapes.png $URL/segment
  curl -s -H 'content-type: application/json' -d @runs/samples/series.json $URL/forecast
  curl -s -H 'content-type: application/json' -d '{"prefix": "the time traveller", "length": 80, "temperature": 0.5, "seed": 1}' $URL/generate
  curl -s -H 'content-type: application/json' -d '{"texts": ["the kettle is not great, returned it", "lovely lamp"], "k": 2}' $URL/classify_text
  curl -s -X POST $URL/models

TXT
exec .venv/bin/bentoml serve service.service:SpecServe --port "$PORT"
