#!/usr/bin/env bash
# The demo, end to end on a CPU: tiny random-weight models (configs/tiny.yaml) on generated
# sample clips (and a few broken files): preprocess -> train -> sample -> view.
# Installs tsa first (CPU torch pin) if it is not installed. Output: demo_out/ (or $DEMO_OUT).
set -euo pipefail
cd "$(dirname "$0")"
OUT=${DEMO_OUT:-demo_out}

if ! command -v tsa >/dev/null 2>&1 || ! python -c "import tsa.core, tsa.pipeline, tsa.train, tsa.view, tsa.evaluate" 2>/dev/null; then
    echo "== installing tsa (CPU torch pin, then the project)"
    python -m pip install -q torch==2.13.0
    python -m pip install -q -e '.[dev]'
fi
# Tiny models are built once with a fixed seed and cached here, then loaded like real weights.
export TSA_CACHE=${TSA_CACHE:-$PWD/$OUT/model_cache}

echo "== 1/5 sample clips (OpenVid layout: clips.csv + videos/, with broken inputs) -> $OUT/clips"
rm -rf "$OUT/clips"
python -c "from tsa.testing.sample_clips import make_sample_clips; make_sample_clips('$OUT/clips', n=8, seed=0)"

echo "== 2/5 tsa preprocess"
tsa preprocess --src "$OUT/clips" --out "$OUT/shards" --config tiny --overwrite --no-progress

echo "== 3/5 tsa train"
rm -rf "$OUT/run"
tsa train --shards "$OUT/shards" --out "$OUT/run" --config tiny --max-steps 6 --checkpoint-every 3

echo "== 4/5 tsa sample (2 prompts, 4 denoising steps)"
rm -rf "$OUT/videos"
printf 'A ball rolls across a table and hits a glass of water.\nHoney pours slowly into warm milk.\n' > "$OUT/prompts.txt"
tsa sample --checkpoint "$OUT/run/checkpoint-6" --prompts "$OUT/prompts.txt" --out "$OUT/videos" --steps 4

echo "== 5/5 tsa view (one clip, then the gallery)"
key=$(python -c "
from tsa.shards.reader import open_output
print(open_output('$OUT/shards').keys[0])")
tsa view --shards "$OUT/shards" --key "$key" --out "$OUT/clip.png"
tsa view --shards "$OUT/shards" --out "$OUT/gallery.html"

echo
echo "done: metrics $OUT/run/metrics.jsonl, videos $OUT/videos/, clip view $OUT/clip.png"
echo "open the gallery in a browser: file://$(cd "$OUT" && pwd)/gallery.html"
