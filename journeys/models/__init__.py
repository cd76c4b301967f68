"""Models of the journeys core, split by concept and re-exported here."""

from journeys.models.base import Timestamped
from journeys.models.customers import (
    Customer,
    CustomerMerge,
    Identity,
    MergeRefusal,
    ProfileCheck,
    ProfileCheckBackfill,
)
from journeys.models.events import Event, EventKey, Source
from journeys.models.runs import (
    DateTriggerDue,
    DateTriggerStale,
    EngineGeneration,
    EntryGate,
    JourneyRun,
    SchedulerLease,
    SegmentMember,
    SegmentRecheck,
    SegmentRules,
    StepExecution,
    TriggerState,
    TriggerWatch,
)
from journeys.models.governance import (
    AuditEntry,
    AuditReport,
    ChangeRequest,
    ChangeRequestStatus,
    OperationsSwitch,
    RoleMember,
    SwitchScope,
)
from journeys.models.workflows import BusinessUnit, Edge, Step, Workflow, WorkflowVersion

__all__ = [
    "MergeRefusal",
    "RoleMember",
    "Timestamped",
    "Customer",
    "CustomerMerge",
    "Identity",
    "ProfileCheck",
    "ProfileCheckBackfill",
    "Event",
    "EventKey",
    "Source",
    "DateTriggerDue",
    "DateTriggerStale",
    "EngineGeneration",
    "EntryGate",
    "SchedulerLease",
    "SegmentMember",
    "SegmentRecheck",
    "SegmentRules",
    "JourneyRun",
    "StepExecution",
    "TriggerState",
    "TriggerWatch",
    "BusinessUnit",
    "Edge",
    "Step",
    "Workflow",
    "WorkflowVersion",
    "AuditEntry",
    "AuditReport",
    "ChangeRequest",
    "ChangeRequestStatus",
    "OperationsSwitch",
    "SwitchScope",
]

from journeys.models.catalog import (  # noqa: E402
    EventDefinition,
    LifecycleStage,
    StageRecheck,
    StageRules,
    StageTransition,
)

__all__ += ["EventDefinition", "LifecycleStage", "StageRecheck", "StageRules", "StageTransition"]

from journeys.models.jobs import Job, JobChunk, JobKind, JobStatus  # noqa: E402

__all__ += ["Job", "JobChunk", "JobKind", "JobStatus"]

from journeys.models.api import ApiRequest, ApiToken  # noqa: E402
from journeys.models.stream import StreamAttempt, StreamBatch, StreamDestination, StreamEvent  # noqa: E402

__all__ += ["ApiRequest", "ApiToken", "StreamAttempt", "StreamBatch", "StreamDestination", "StreamEvent"]

from journeys.models.limits import RateCounter  # noqa: E402

__all__ += ["RateCounter"]

from journeys.models.quarantine import QuarantinedEvent  # noqa: E402

__all__ += ["QuarantinedEvent"]
