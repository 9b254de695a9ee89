"""The Prometheus text format of the tiny metrics registry, and the server's own counts after real sessions."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from agent.server.metrics import CONTENT_TYPE, MetricsRegistry

from .conftest import await_until, collect_speak, open_session, recv_json


def test_text_format():
    reg = MetricsRegistry()
    c = reg.counter("x_total", "Things.", ["kind"])
    g = reg.gauge("x_open", "Open now.")
    h = reg.histogram("x_seconds", "Latency.", ["kind"], buckets=[0.1, 1.0])
    c.inc(kind='a"b\\c\n')
    c.inc(2, kind="plain")
    g.inc()
    g.inc()
    g.dec()
    for v in (0.05, 0.5, 5.0):
        h.observe(v, kind="k")
    text = reg.render()
    assert text.endswith("\n")
    assert "# TYPE x_total counter\n" in text and "# HELP x_total Things.\n" in text
    assert 'x_total{kind="a\\"b\\\\c\\n"} 1\n' in text
    assert 'x_total{kind="plain"} 2\n' in text
    assert "x_open 1\n" in text
    assert 'x_seconds_bucket{kind="k",le="0.1"} 1\n' in text
    assert 'x_seconds_bucket{kind="k",le="1"} 2\n' in text
    assert 'x_seconds_bucket{kind="k",le="+Inf"} 3\n' in text
    assert 'x_seconds_sum{kind="k"} 5.55\n' in text and 'x_seconds_count{kind="k"} 3\n' in text
    with pytest.raises(ValueError):
        c.inc(-1, kind="a")
    with pytest.raises(ValueError):
        c.inc(wrong="a")
    assert reg.counter("x_total", "Things.", ["kind"]) is c  # registering again returns the same metric
    with pytest.raises(ValueError):
        reg.gauge("x_total", "Things.", ["kind"])


async def test_server_counts(espeak, server_factory):
    live = server_factory(espeak)
    ws, _, _ = await open_session(live.speak_url, {})
    try:
        for text in ("One.", "Two."):
            await ws.send(json.dumps({"type": "speak", "text": text}))
            assert (await collect_speak(ws))[2]["type"] == "complete"
        await ws.send(json.dumps({"type": "speak", "text": ""}))
        assert (await recv_json(ws))["code"] == "INVALID_TEXT"
        await ws.send("{bad")
        assert (await recv_json(ws))["code"] == "INVALID_MESSAGE"
        r = httpx.get(live.http + "/metrics")
        assert r.status_code == 200 and r.headers["content-type"] == CONTENT_TYPE
        text = r.text
        assert 'duplex_sessions_active{kind="speak"} 1\n' in text
    finally:
        await ws.close()
    assert await await_until(lambda: live.ctx.sessions.active == 0)
    text = httpx.get(live.http + "/metrics").text
    values = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) (\S+)$", text, re.M)}
    assert values['duplex_sessions_active{kind="speak"}'] == 0
    assert values['duplex_sessions_total{kind="speak"}'] == 1
    assert values['duplex_turns_total{kind="speak",outcome="complete"}'] == 2
    assert values['duplex_errors_total{kind="speak",code="INVALID_TEXT"}'] == 1
    assert values['duplex_errors_total{kind="speak",code="INVALID_MESSAGE"}'] == 1
    assert values['duplex_first_audio_seconds_count{kind="speak"}'] == 2
    assert 0 < values['duplex_first_audio_seconds_sum{kind="speak"}'] < 2
    assert values['duplex_turn_seconds_count{kind="speak"}'] == 2
    assert values['duplex_audio_seconds_total{kind="speak"}'] > 0.5
    assert values['duplex_model_ready{model="tts"}'] == 1
