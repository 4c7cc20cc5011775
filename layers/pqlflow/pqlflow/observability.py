"""Logger, Metrics and Tracer for every pqlflow function, created once here (Powertools for AWS Lambda).

Service name and metrics namespace come from POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE,
which the SAM template sets per function; nothing here creates AWS clients.
"""

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger()
metrics = Metrics(namespace="pqlflow")
tracer = Tracer(auto_patch=False)
