"""UltravoxProcessor for the tiny Ultravox model: remote code, shipped into the model directory.

Ultravox's processor exists only as remote code on the hub, and vLLM
(vllm/model_executor/models/ultravox.py) calls it rather than reimplementing it. This one is
written for mmdemo from what vLLM 0.32 asks of it:

- `.audio_processor`: a WhisperFeatureExtractor (its sampling_rate and chunk_length are read);
- `.audio_token_replacement` and `.audio_replacement_token_id`: set by vLLM after loading;
- `__call__(text=..., audios=[...], sampling_rate=..., include_audio_num_chunks=True)` returning
  `audio_values` (chunks, mel bins, frames), `audio_lens` (valid mel frames per chunk),
  `audio_token_len` (LM tokens per chunk) and `audio_num_chunks` (chunks per audio).

Audio longer than the encoder's context (30 s for Whisper) is cut into 30 s chunks, as the hub
processor does. The token count per chunk follows vLLM's encoder: a stride-2 convolution, then
`stack_factor` frames stacked per LM token.

Imports only numpy and transformers (it runs inside vLLM's process, loaded by
`--trust-remote-code`); nothing from mmdemo.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import transformers


class UltravoxProcessor(transformers.ProcessorMixin):
    """A Whisper feature extractor and a tokenizer; expands each audio placeholder to its tokens."""

    def __init__(
        self,
        audio_processor: Any = None,
        tokenizer: Any = None,
        stack_factor: int = 8,
        audio_placeholder: str = "<|audio|>",
        chat_template: str | None = None,
    ) -> None:
        self.stack_factor = stack_factor
        self.audio_placeholder = audio_placeholder
        # vLLM overrides both after loading (its placeholder is a reserved token of the vocab).
        self.audio_token_replacement = audio_placeholder
        self.audio_replacement_token_id = (
            tokenizer.convert_tokens_to_ids(audio_placeholder) if tokenizer else None
        )
        super().__init__(audio_processor=audio_processor, tokenizer=tokenizer, chat_template=chat_template)

    def _chunks(self, audio: Any) -> list[np.ndarray]:
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        size = self.audio_processor.n_samples  # chunk_length s at sampling_rate
        return [samples[i : i + size] for i in range(0, max(len(samples), 1), size)]

    def _tokens_for(self, mel_frames: int) -> int:
        encoder_frames = (mel_frames - 1) // 2 + 1  # the encoder's stride-2 conv
        return math.ceil(encoder_frames / self.stack_factor)

    def __call__(
        self,
        text: str | list[str] | None = None,
        audios: Any = None,
        audio: Any = None,
        *,
        sampling_rate: int | None = None,
        return_tensors: str | None = "pt",
        include_audio_num_chunks: bool = False,
        **kwargs: Any,
    ) -> transformers.BatchFeature:
        """Mel features per 30 s chunk, their lengths and LM token counts; text with expanded placeholders."""
        if audios is None:
            audios = audio
        if audios is not None and not isinstance(audios, (list, tuple)):
            audios = [audios]
        data: dict[str, Any] = {}
        tokens_per_audio: list[int] = []
        if audios:
            rate = sampling_rate or self.audio_processor.sampling_rate
            features: list[np.ndarray] = []
            num_chunks: list[int] = []
            for one in audios:
                chunks = self._chunks(one)
                num_chunks.append(len(chunks))
                for chunk in chunks:
                    mel = self.audio_processor(
                        chunk, sampling_rate=rate, padding="longest", return_tensors="np"
                    ).input_features[0]
                    features.append(mel)
            lens = [f.shape[-1] for f in features]
            width = max(lens)
            data["audio_values"] = np.stack([np.pad(f, ((0, 0), (0, width - f.shape[-1]))) for f in features])
            data["audio_lens"] = np.array(lens, dtype=np.int64)
            token_len = [self._tokens_for(n) for n in lens]
            data["audio_token_len"] = np.array(token_len, dtype=np.int64)
            if include_audio_num_chunks:
                data["audio_num_chunks"] = np.array(num_chunks, dtype=np.int64)
            start = 0
            for n in num_chunks:
                tokens_per_audio.append(sum(token_len[start : start + n]))
                start += n
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            counts = iter(tokens_per_audio)
            expanded = []
            for one in texts:
                parts = one.split(self.audio_placeholder)
                out = parts[0]
                for part in parts[1:]:
                    n = next(counts, None)
                    if n is None:
                        raise ValueError(f"more {self.audio_placeholder} placeholders than audios")
                    out += self.audio_token_replacement * n + part
                expanded.append(out)
            kwargs.pop("truncation", None)
            data.update(self.tokenizer(expanded, add_special_tokens=False))
        return transformers.BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        """What the model reads from this processor's output."""
        return [
            "input_ids",
            "attention_mask",
            "audio_values",
            "audio_lens",
            "audio_token_len",
            "audio_num_chunks",
        ]
