"""A stand-in for the Lambda context object handed to handlers run by the local runtime (and in tests)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from pqlflow.kernel import clock
from pqlflow.local.names import function_arn


@dataclass
class LambdaContext:
    """The attributes and method of `awslambdaric`'s context that handlers and Powertools use."""

    function_name: str = "pqlflow-local-function"
    memory_limit_in_mb: int = 128
    timeout_seconds: int = 3
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"
    _deadline_ms: int = 0

    def __post_init__(self) -> None:
        if not self.log_group_name:
            self.log_group_name = f"/aws/lambda/{self.function_name}"
        if not self._deadline_ms:
            self._deadline_ms = clock.now_ms() + self.timeout_seconds * 1000

    @property
    def invoked_function_arn(self) -> str:
        return function_arn(self.function_name)

    def get_remaining_time_in_millis(self) -> int:
        """Time left before the function's timeout, on pqlflow's (possibly simulated) clock."""
        return max(0, self._deadline_ms - clock.now_ms())
