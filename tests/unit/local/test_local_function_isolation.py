"""A local function runs one invocation at a time, like one Lambda execution environment."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from local.functions import LocalFunction
from local.template import FunctionSpec


class HandlerWithModuleState:
    """Keeps the current request on a shared object, as powertools' resolver does."""

    def __init__(self) -> None:
        self.current_event: Any = None

    def __call__(self, event: Any, context: Any) -> Any:
        self.current_event = event
        time.sleep(0.2)  # the request is being handled; another one arrives meanwhile
        return self.current_event


def test_concurrent_requests_each_get_their_own_answer() -> None:
    # Given a function whose handler keeps per-request state at module level
    spec = FunctionSpec("BatchesFunction", Path("."), "handler.lambda_handler", {}, 30, 256)
    function = LocalFunction(
        spec, "fn", "arn:aws:lambda:::function:fn", {}, HandlerWithModuleState()
    )
    answers: dict[str, Any] = {}

    def call(device: str) -> None:
        answers[device] = function.invoke({"device": device})

    # When two devices' requests arrive while the first is still being handled
    first = threading.Thread(target=call, args=("laptop",))
    second = threading.Thread(target=call, args=("pi",))
    first.start()
    time.sleep(0.05)
    second.start()
    first.join(5)
    second.join(5)

    # Then each device gets the answer to its own request
    assert answers == {"laptop": {"device": "laptop"}, "pi": {"device": "pi"}}
