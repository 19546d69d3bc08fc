"""The wire format's encoder writes exactly what a general JSON encoder would."""

from __future__ import annotations

import json
import random

from chatsession.web.protocol import encode_frame


def _text(rng: random.Random) -> str:
    alphabet = 'ab "\\\n\t\x00\x1f\x7f/é😀\u2028<>&'
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def test_frames_encode_as_compact_json_with_non_ascii_kept() -> None:
    rng = random.Random(3)
    for _ in range(3_000):
        frame: dict[str, object] = {"type": _text(rng)}
        for key in rng.sample(["content", "message", "sessionId", 'odd "key"'], 2):
            frame[key] = _text(rng)
        if rng.random() < 0.3:
            frame["status"] = rng.choice([400, 429, None, True])
        expected = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
        assert encode_frame(frame) == expected
        assert json.loads(encode_frame(frame)) == frame
