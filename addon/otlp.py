"""Pure encoding: spans → OTLP `ExportTraceServiceRequest` protobuf bytes (no I/O here)."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Status
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from addon.spans import AttrValue, Span
from proxy import __version__

SCOPE = "neatlogs.opencode.proxy"
SERVICE_NAME = "neatlogs.opencode"


def any_value(v: AttrValue) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(x) for x in v]))
    return AnyValue(string_value=str(v))


def resource_attributes(workflow_name: str) -> dict[str, AttrValue]:
    return {
        "service.name": SERVICE_NAME,
        "service.version": __version__,
        "neatlogs.workflow_name": workflow_name,
        "neatlogs.capture.source": "proxy",
    }


def encode(spans: Iterable[Span], workflow_name: str) -> bytes:
    pb_spans = [
        PbSpan(
            trace_id=bytes.fromhex(s.trace_id),
            span_id=bytes.fromhex(s.span_id),
            parent_span_id=bytes.fromhex(s.parent_span_id) if s.parent_span_id else b"",
            name=s.name,
            kind=s.kind,  # type: ignore[arg-type]
            start_time_unix_nano=s.start_ns,
            end_time_unix_nano=s.end_ns,
            attributes=[KeyValue(key=k, value=any_value(v)) for k, v in s.attributes.items()],
            status=Status(code=s.status_code, message=s.status_message),  # type: ignore[arg-type]
        )
        for s in spans
    ]
    req = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=Resource(attributes=[KeyValue(key=k, value=any_value(v))
                                      for k, v in resource_attributes(workflow_name).items()]),
        scope_spans=[ScopeSpans(scope=InstrumentationScope(name=SCOPE, version=__version__), spans=pb_spans)],
    )])
    return req.SerializeToString()
