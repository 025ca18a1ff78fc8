"""The HTTP header and gRPC metadata names one brunoise process (or a client) writes and another reads."""

from __future__ import annotations

# --- client to router --------------------------------------------------------------------------------------------
#: The session part of a request's key, in precedence order (after the gRPC field).
SESSION_HEADERS = ("x-session-id", "x-user-id")
#: The tenant: the group part of a grouped key (an authenticating front end sets it from the API key's tenant).
TENANT_HEADER = "x-tenant-id"
#: The target (a model version's pods) a request asks for; the router answers with the one it went to.
TARGET_HEADER = "x-brunoise-target"

# --- router (or client) to pod -----------------------------------------------------------------------------------
#: The request's SliceKey (decimal, [0, 2^64)): the pod accounts its load and cache to it.
SLICE_KEY_HEADER = "x-brunoise-slice-key"
#: The KV pull hint (router to pod; never a client's): ``<pod id> <lo> <hi>`` (``sharder.kv_pull``).
KV_PULL_HEADER = "x-brunoise-kv-pull"
#: A request's absolute deadline (unix milliseconds): a client may send it to the router, the router sends it on to
#: the pod (``axon_router.routing_key.deadline_from`` reads it, the router writes it, the pod's pull reads it).
DEADLINE_HEADER = "x-brunoise-deadline-ms"

# --- answers -----------------------------------------------------------------------------------------------------
#: The pod that answered (set by the runtime; routers pass it through).
POD_ID_HEADER = "x-brunoise-pod-id"
#: brunoise-router's account of a request: the pod, the tier it was picked from (in_subset, held, spill, ...), the
#: rule of a subset or held pick (sticky, cost, ...), the attempts made.
ROUTER_POD_HEADER = "x-brunoise-pod"
PICK_HEADER = "x-brunoise-pick"
PICK_RULE_HEADER = "x-brunoise-pick-rule"
ATTEMPTS_HEADER = "x-brunoise-attempts"
#: Trailing metadata of an assigner follower's FAILED_PRECONDITION: the leader's address (slicelet, pod, CLI follow it).
LEADER_METADATA_KEY = "x-brunoise-leader"

__all__ = [
    "ATTEMPTS_HEADER",
    "DEADLINE_HEADER",
    "KV_PULL_HEADER",
    "LEADER_METADATA_KEY",
    "PICK_HEADER",
    "PICK_RULE_HEADER",
    "POD_ID_HEADER",
    "ROUTER_POD_HEADER",
    "SESSION_HEADERS",
    "SLICE_KEY_HEADER",
    "TARGET_HEADER",
    "TENANT_HEADER",
]
