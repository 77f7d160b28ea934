"""The status model: states of studies, instances and forwards, and the names BraNet uses inside Orthanc."""

from __future__ import annotations

from enum import Enum


class StudyState(str, Enum):
    """Where a study stands. The last four are final until new images arrive or a re-run is asked for."""

    QUEUED = "queued"        # waiting for a worker (possibly after a retry delay)
    RUNNING = "running"      # a worker holds it
    ANALYSED = "analysed"    # at least one breast image analysed; per-image errors, if any, are in the reason
    SKIPPED = "skipped"      # nothing to analyse (no breast image), reason says why
    ERROR = "error"          # breast images present, none could be analysed (corrupt, model unavailable...)
    FAILED = "failed"        # retries exhausted (worker crashes, Orthanc unreachable, timeouts)


FINAL_STUDY_STATES = frozenset({StudyState.ANALYSED, StudyState.SKIPPED, StudyState.ERROR, StudyState.FAILED})


class InstanceState(str, Enum):
    PENDING = "pending"      # planned by the current run (so its own outputs' stable event finds nothing new)
    STORING = "storing"      # results computed and written to the outbox; SEG/SR being stored into Orthanc
    OK = "ok"                # analysed (with or without findings); outputs stored
    SKIPPED = "skipped"      # not a breast image (ingest rules)
    ERROR = "error"          # could not be read or analysed


class ForwardState(str, Enum):
    PENDING = "pending"      # waiting for its (next) attempt
    SENDING = "sending"      # an Orthanc store job is running
    SENT = "sent"
    FAILED = "failed"        # attempts exhausted


# Study metadata written into Orthanc (declared under "UserMetadata" in the generated configuration).
METADATA_STATUS = "BraNetStatus"
METADATA_MODEL_VERSION = "BraNetModelVersion"
METADATA_TIME = "BraNetTime"
METADATA_REASON = "BraNetReason"
USER_METADATA = {
    METADATA_STATUS: 4201,
    METADATA_MODEL_VERSION: 4202,
    METADATA_TIME: 4203,
    METADATA_REASON: 4204,
}

# Orthanc global property holding the last /changes sequence number the plugin has handled.
GLOBAL_PROPERTY_LAST_CHANGE = 4201

# Longest reason kept in Orthanc metadata (the full text stays in the service database).
MAX_METADATA_REASON = 1000
