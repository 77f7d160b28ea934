"""The names BraNet uses inside Orthanc, and the states of forwards. Study and instance outcomes use the core's
vocabulary (`branet_pacs.types.StudyState`, `Status`)."""

from __future__ import annotations

from enum import Enum


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
