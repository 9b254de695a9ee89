#!/usr/bin/env bash
# Regenerates the espeak-ng test utterances (testkit/audio/espeak_*.wav), cough.wav and espeak_manifest.json.
#
# Short things a voice-agent user says, in several espeak-ng voices and speeds, as 16 kHz mono 16-bit WAV.
# Synthetic and robotic: good for VAD, turn-taking, barge-in and pipeline tests; a poor STT accuracy input
# (pocketsphinx WER 54-90 % on espeak voices; the flite_* files are better).
# Needs Debian's espeak-ng and sox:  apt-get install -y espeak-ng sox
# Deterministic: no dither (-D), fixed noise seed (-R).
set -euo pipefail

out="$(cd "$(dirname "$0")/.." && pwd)/testkit/audio"
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

for tool in espeak-ng sox soxi; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y espeak-ng sox" >&2; exit 1; }
done

# file stem | espeak voice | words per minute | text [| espeak input, when the text would be misread: phonemes in [[ ]]]
utterances=(
  "weather|en-us|175|What is the weather like today?"
  "joke|en-gb|150|Tell me a joke."
  "stop|en-us|200|Stop."
  "hear_me|en+f3|175|Can you hear me?"
  "mhm|en-us|150|mhm|[[m:'hm:]]"  # the text alone is spelled out: "M H M"
  "wait|en+f3|200|Wait, wait, hold on."
  "timer|en-gb|200|Set a timer for five minutes."
  "repeat|en+m3|150|Sorry, can you say that again?"
  "no|en-gb|175|No."
  "yes_please|en+f3|150|Yes, please."
  "thanks|en-us|200|Thank you, that's all for now."
  "capital|en+m3|175|What is the capital of France?"
)

manifest="$out/espeak_manifest.json"
entries=()
for entry in "${utterances[@]}"; do
  IFS='|' read -r stem voice rate text input <<<"$entry"
  input="${input:-$text}"
  file="espeak_${stem}_${voice//+/-}_${rate}.wav"
  espeak-ng -v "$voice" -s "$rate" -w "$tmp/raw.wav" "$input"
  sox -D "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$out/$file"
  seconds="$(soxi -D "$out/$file")"
  entries+=("$(printf '  {"file": "%s", "text": "%s", "espeak_input": "%s", "voice": "%s", "rate": %d, "sample_rate": 16000, "seconds": %.3f, "source": "espeak-ng %s (synthetic speech)"}' \
    "$file" "$text" "$input" "$voice" "$rate" "$seconds" "$(espeak-ng --version | awk '{print $4}')")")
done

# cough.wav: a 0.3 s band-passed pink-noise burst with a fast attack and a decaying tail (a cough-like non-speech
# noise for VAD / false-barge-in tests)
sox -D -R -n -r 16000 -c 1 -b 16 "$out/cough.wav" synth 0.3 pinknoise band 1000 700 fade h 0.008 0.3 0.24 gain -n -6
seconds="$(soxi -D "$out/cough.wav")"
entries+=("$(printf '  {"file": "cough.wav", "text": "", "espeak_input": "", "voice": "sox pinknoise", "rate": 0, "sample_rate": 16000, "seconds": %.3f, "source": "sox band-passed noise burst (not speech)"}' "$seconds")")

{
  echo "["
  for i in "${!entries[@]}"; do
    if (( i < ${#entries[@]} - 1 )); then echo "${entries[$i]},"; else echo "${entries[$i]}"; fi
  done
  echo "]"
} >"$manifest"

echo "wrote ${#entries[@]} files to $out ($(du -ch "$out"/espeak_*.wav "$out/cough.wav" | tail -1 | cut -f1))"
