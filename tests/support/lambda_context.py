"""A stand-in for the Lambda context object."""

from dataclasses import dataclass


@dataclass
class LambdaContext:
    function_name: str = "pqlflow-test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:pqlflow-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000
