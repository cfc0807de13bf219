"""Synthetic stand-ins for the upstream media: small, valid and deterministic per key."""

from __future__ import annotations

import wave
from collections.abc import Callable
from typing import IO

# The file extension each generator writes.
EXTENSIONS = {"image": ".jpg", "video": ".mp4", "audio": ".wav"}

_PALETTES = {
    "duck": ((250, 230, 120), (255, 200, 0), (230, 120, 20)),
    "lion": ((110, 160, 70), (200, 140, 60), (120, 70, 20)),
}
_TONES = {"winning_call": (440.0, 660.0, 880.0), "azacinto_foscolo": (262.0, 330.0, 392.0, 523.0)}


def make_jpeg(out: IO[bytes], key: str) -> None:
    """A 256x256 JPEG of coloured shapes, its palette chosen by `key`."""
    from PIL import Image, ImageDraw  # deferred: the CLI must start fast

    bg, a, b = _PALETTES.get(key, ((90, 140, 210), (240, 240, 240), (40, 120, 60)))
    image = Image.new("RGB", (256, 256), bg)
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 40, 150, 150), fill=a)
    draw.rectangle((130, 120, 230, 220), fill=b)
    draw.polygon([(20, 230), (90, 170), (120, 240)], fill=(200, 30, 30))
    image.save(out, format="JPEG", quality=90)


def make_mp4(out: IO[bytes], key: str) -> None:
    """A 2 s, 64x64 MPEG-4 video of a square crossing the frame."""
    import av  # deferred: the CLI must start fast
    import numpy as np

    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(16):
            frame = np.zeros((64, 64, 3), dtype=np.uint8)
            frame[:, :] = (30, 60, 120)
            x = 4 * i  # a square crossing the frame, so frames differ
            frame[20:40, x : x + 16] = (250, 200, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_wav(out: IO[bytes], key: str) -> None:
    """A 16 kHz mono WAV of tones, their pitches chosen by `key`."""
    import numpy as np  # deferred: the CLI must start fast

    rate, seconds_per_tone = 16000, 0.75
    t = np.arange(int(rate * seconds_per_tone)) / rate
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)  # no clicks between tones
    tones = [0.3 * np.sin(2 * np.pi * f * t) * fade for f in _TONES.get(key, (500.0, 700.0))]
    pcm = (np.concatenate(tones) * 32767).astype("<i2")
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


GENERATORS: dict[str, Callable[[IO[bytes], str], None]] = {
    "image": make_jpeg,
    "video": make_mp4,
    "audio": make_wav,
}
