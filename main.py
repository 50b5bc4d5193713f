"""Cloud Functions entry point: `functions-framework --target bootstrap --signature-type cloudevent`."""

import functions_framework
from cloudevents.http import CloudEvent

from function.handler import handle


@functions_framework.cloud_event
def bootstrap(cloud_event: CloudEvent) -> None:
    handle(cloud_event)
