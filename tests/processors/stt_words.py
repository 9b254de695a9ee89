"""What the STT tests may expect of the committed flite clips, and noise to feed them."""

from __future__ import annotations

import numpy as np

from processors.audio import STT_SAMPLE_RATE

# Words pocketsphinx got right in every condition we measured (plain; 1 s / 0.5 s of zeros around; with and without
# dither); other words in these sentences were sometimes wrong ("dog" -> "god", "thursday" -> "first the").
KEY_WORDS = {
    "flite_weather_kal16.wav": ("weather", "paris"),
    "flite_lights_slt.wav": ("lights", "kitchen"),
    "flite_table_rms.wav": ("table", "tonight"),
    "flite_pizza_kal16.wav": ("pizza", "order"),
    "flite_story_slt.wav": ("story",),
    "flite_meeting_rms.wav": ("meeting", "lunch"),
}
# After 16k -> 8k -> 16k (telephone band) WER is 18 % over the six with the engine's defaults (51-54 % without its
# edge-zero trimming); only these two kept both key words in every run.
TELEPHONE_KEY_WORDS = {
    "flite_weather_kal16.wav": ("weather", "paris"),
    "flite_meeting_rms.wav": ("meeting", "lunch"),
}


def noise(seconds: float, seed: int = 0, level: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * STT_SAMPLE_RATE)) * level).astype(np.float32)
