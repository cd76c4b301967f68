"""Models of the journeys core, split by concept and re-exported here."""

from journeys.models.base import Timestamped
from journeys.models.customers import Customer, CustomerMerge, Identity, MergeRefusal
from journeys.models.events import Event, Source
from journeys.models.runs import EngineGeneration, JourneyRun, StepExecution, TriggerState, TriggerWatch
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
    "Event",
    "Source",
    "EngineGeneration",
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

from journeys.models.catalog import EventDefinition, LifecycleStage, StageTransition  # noqa: E402

__all__ += ["EventDefinition", "LifecycleStage", "StageTransition"]

from journeys.models.jobs import Job, JobKind, JobStatus  # noqa: E402

__all__ += ["Job", "JobKind", "JobStatus"]
