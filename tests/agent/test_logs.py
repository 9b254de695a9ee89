"""``agent.logs.configure_logging``: one level for stdlib logging and loguru (pipecat's logger), and the library
messages that say nothing a user can act on dropped at every level."""

from __future__ import annotations

import logging
import sys

import pytest
from loguru import logger

from agent.logs import configure_logging


@pytest.fixture
def restore_logging():
    yield
    logger.remove()
    logger.add(sys.stderr)
    logging.basicConfig(level=logging.WARNING, force=True)


def test_one_level_for_both_loggers(capsys, restore_logging):
    configure_logging("warning")
    logger.debug("pipecat frame chatter")
    logger.info("pipecat info")
    logging.getLogger("duplex.server").info("our info")
    logger.warning("pipecat warning")
    logging.getLogger("duplex.server").warning("our warning")
    err = capsys.readouterr().err
    assert "chatter" not in err and "pipecat info" not in err and "our info" not in err
    assert "WARNING" in err and "pipecat warning" in err and "our warning" in err

    configure_logging("debug")
    logger.debug("now shown")
    assert "now shown" in capsys.readouterr().err


def test_the_per_call_video_warning_is_quiet(capsys, restore_logging):
    configure_logging("debug")
    webrtc = logger.patch(lambda r: r.update(name="pipecat.transports.smallwebrtc.connection"))
    webrtc.warning("No video transceiver is available")
    webrtc.warning("No screen video transceiver is available")
    webrtc.warning("No audio transceiver is available")  # this one matters: the call has no microphone track
    err = capsys.readouterr().err
    assert "video" not in err and "No audio transceiver" in err


def test_unknown_level_is_refused():
    with pytest.raises(ValueError, match="debug, info, warning, error"):
        configure_logging("verbose")
