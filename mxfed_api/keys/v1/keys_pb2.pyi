from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DiagnosisOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIAGNOSIS_OUTCOME_UNSPECIFIED: _ClassVar[DiagnosisOutcome]
    DIAGNOSIS_OUTCOME_PASS: _ClassVar[DiagnosisOutcome]
    DIAGNOSIS_OUTCOME_WARN: _ClassVar[DiagnosisOutcome]
    DIAGNOSIS_OUTCOME_FAIL: _ClassVar[DiagnosisOutcome]
    DIAGNOSIS_OUTCOME_SKIP: _ClassVar[DiagnosisOutcome]

class DiagnosisStep(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIAGNOSIS_STEP_UNSPECIFIED: _ClassVar[DiagnosisStep]
    DIAGNOSIS_STEP_SERVER_NAME: _ClassVar[DiagnosisStep]
    DIAGNOSIS_STEP_WELL_KNOWN: _ClassVar[DiagnosisStep]
    DIAGNOSIS_STEP_SRV: _ClassVar[DiagnosisStep]
    DIAGNOSIS_STEP_DISCOVERY: _ClassVar[DiagnosisStep]
    DIAGNOSIS_STEP_ADDRESSES: _ClassVar[DiagnosisStep]
    DIAGNOSIS_STEP_TLS: _ClassVar[DiagnosisStep]
    DIAGNOSIS_STEP_VERSION: _ClassVar[DiagnosisStep]
    DIAGNOSIS_STEP_CLOCK: _ClassVar[DiagnosisStep]
    DIAGNOSIS_STEP_SERVER_KEYS: _ClassVar[DiagnosisStep]
    DIAGNOSIS_STEP_NOTARIES: _ClassVar[DiagnosisStep]
    DIAGNOSIS_STEP_REACHES_US: _ClassVar[DiagnosisStep]
    DIAGNOSIS_STEP_DELIVERY: _ClassVar[DiagnosisStep]
    DIAGNOSIS_STEP_ROOM_ACL: _ClassVar[DiagnosisStep]

class DiagnosisCause(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIAGNOSIS_CAUSE_UNSPECIFIED: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_INVALID_SERVER_NAME: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_WELL_KNOWN_HTTP_STATUS: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_WELL_KNOWN_REDIRECT_LOOP: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_WELL_KNOWN_TOO_MANY_REDIRECTS: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_WELL_KNOWN_NOT_HTTPS: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_WELL_KNOWN_TOO_LARGE: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_WELL_KNOWN_NOT_JSON: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_WELL_KNOWN_INVALID: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_WELL_KNOWN_BLOCKED: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_WELL_KNOWN_TIMEOUT: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_WELL_KNOWN_TLS: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_WELL_KNOWN_UNREACHABLE: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_SRV_LOOKUP_FAILED: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_SRV_SERVICE_UNAVAILABLE: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_SRV_DEPRECATED: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_SRV_TARGET_CNAME: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_DNS_NO_ADDRESS: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_DNS_LOOKUP_FAILED: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_IP_BLOCKED: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_CONNECTION_REFUSED: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_CONNECTION_TIMEOUT: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_CONNECTION_FAILED: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_TLS_HANDSHAKE_FAILED: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_CERTIFICATE_NAME_MISMATCH: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_CERTIFICATE_EXPIRED: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_CERTIFICATE_NOT_YET_VALID: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_CERTIFICATE_UNTRUSTED: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_HTTP_ERROR: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_INVALID_RESPONSE: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_CLOCK_SKEW: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_KEY_INVALID: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_KEY_EXPIRED: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_KEY_EXPIRES_SOON: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_KEY_NOT_CURRENT: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_NOTARY_UNREACHABLE: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_NOTARY_ANSWER_INVALID: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_NOTARY_CANNOT_FETCH_OUR_KEYS: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_NOTARY_API_UNAVAILABLE: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_CANNOT_REACH_US: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_STALE_KEY_FOR_US: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_BACKED_OFF: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_ACL_DENIED: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_ROOM_UNKNOWN: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_SERVICE_UNAVAILABLE: _ClassVar[DiagnosisCause]
    DIAGNOSIS_CAUSE_SERVER_BLOCKED: _ClassVar[DiagnosisCause]
DIAGNOSIS_OUTCOME_UNSPECIFIED: DiagnosisOutcome
DIAGNOSIS_OUTCOME_PASS: DiagnosisOutcome
DIAGNOSIS_OUTCOME_WARN: DiagnosisOutcome
DIAGNOSIS_OUTCOME_FAIL: DiagnosisOutcome
DIAGNOSIS_OUTCOME_SKIP: DiagnosisOutcome
DIAGNOSIS_STEP_UNSPECIFIED: DiagnosisStep
DIAGNOSIS_STEP_SERVER_NAME: DiagnosisStep
DIAGNOSIS_STEP_WELL_KNOWN: DiagnosisStep
DIAGNOSIS_STEP_SRV: DiagnosisStep
DIAGNOSIS_STEP_DISCOVERY: DiagnosisStep
DIAGNOSIS_STEP_ADDRESSES: DiagnosisStep
DIAGNOSIS_STEP_TLS: DiagnosisStep
DIAGNOSIS_STEP_VERSION: DiagnosisStep
DIAGNOSIS_STEP_CLOCK: DiagnosisStep
DIAGNOSIS_STEP_SERVER_KEYS: DiagnosisStep
DIAGNOSIS_STEP_NOTARIES: DiagnosisStep
DIAGNOSIS_STEP_REACHES_US: DiagnosisStep
DIAGNOSIS_STEP_DELIVERY: DiagnosisStep
DIAGNOSIS_STEP_ROOM_ACL: DiagnosisStep
DIAGNOSIS_CAUSE_UNSPECIFIED: DiagnosisCause
DIAGNOSIS_CAUSE_INVALID_SERVER_NAME: DiagnosisCause
DIAGNOSIS_CAUSE_WELL_KNOWN_HTTP_STATUS: DiagnosisCause
DIAGNOSIS_CAUSE_WELL_KNOWN_REDIRECT_LOOP: DiagnosisCause
DIAGNOSIS_CAUSE_WELL_KNOWN_TOO_MANY_REDIRECTS: DiagnosisCause
DIAGNOSIS_CAUSE_WELL_KNOWN_NOT_HTTPS: DiagnosisCause
DIAGNOSIS_CAUSE_WELL_KNOWN_TOO_LARGE: DiagnosisCause
DIAGNOSIS_CAUSE_WELL_KNOWN_NOT_JSON: DiagnosisCause
DIAGNOSIS_CAUSE_WELL_KNOWN_INVALID: DiagnosisCause
DIAGNOSIS_CAUSE_WELL_KNOWN_BLOCKED: DiagnosisCause
DIAGNOSIS_CAUSE_WELL_KNOWN_TIMEOUT: DiagnosisCause
DIAGNOSIS_CAUSE_WELL_KNOWN_TLS: DiagnosisCause
DIAGNOSIS_CAUSE_WELL_KNOWN_UNREACHABLE: DiagnosisCause
DIAGNOSIS_CAUSE_SRV_LOOKUP_FAILED: DiagnosisCause
DIAGNOSIS_CAUSE_SRV_SERVICE_UNAVAILABLE: DiagnosisCause
DIAGNOSIS_CAUSE_SRV_DEPRECATED: DiagnosisCause
DIAGNOSIS_CAUSE_SRV_TARGET_CNAME: DiagnosisCause
DIAGNOSIS_CAUSE_DNS_NO_ADDRESS: DiagnosisCause
DIAGNOSIS_CAUSE_DNS_LOOKUP_FAILED: DiagnosisCause
DIAGNOSIS_CAUSE_IP_BLOCKED: DiagnosisCause
DIAGNOSIS_CAUSE_CONNECTION_REFUSED: DiagnosisCause
DIAGNOSIS_CAUSE_CONNECTION_TIMEOUT: DiagnosisCause
DIAGNOSIS_CAUSE_CONNECTION_FAILED: DiagnosisCause
DIAGNOSIS_CAUSE_TLS_HANDSHAKE_FAILED: DiagnosisCause
DIAGNOSIS_CAUSE_CERTIFICATE_NAME_MISMATCH: DiagnosisCause
DIAGNOSIS_CAUSE_CERTIFICATE_EXPIRED: DiagnosisCause
DIAGNOSIS_CAUSE_CERTIFICATE_NOT_YET_VALID: DiagnosisCause
DIAGNOSIS_CAUSE_CERTIFICATE_UNTRUSTED: DiagnosisCause
DIAGNOSIS_CAUSE_HTTP_ERROR: DiagnosisCause
DIAGNOSIS_CAUSE_INVALID_RESPONSE: DiagnosisCause
DIAGNOSIS_CAUSE_CLOCK_SKEW: DiagnosisCause
DIAGNOSIS_CAUSE_KEY_INVALID: DiagnosisCause
DIAGNOSIS_CAUSE_KEY_EXPIRED: DiagnosisCause
DIAGNOSIS_CAUSE_KEY_EXPIRES_SOON: DiagnosisCause
DIAGNOSIS_CAUSE_KEY_NOT_CURRENT: DiagnosisCause
DIAGNOSIS_CAUSE_NOTARY_UNREACHABLE: DiagnosisCause
DIAGNOSIS_CAUSE_NOTARY_ANSWER_INVALID: DiagnosisCause
DIAGNOSIS_CAUSE_NOTARY_CANNOT_FETCH_OUR_KEYS: DiagnosisCause
DIAGNOSIS_CAUSE_NOTARY_API_UNAVAILABLE: DiagnosisCause
DIAGNOSIS_CAUSE_CANNOT_REACH_US: DiagnosisCause
DIAGNOSIS_CAUSE_STALE_KEY_FOR_US: DiagnosisCause
DIAGNOSIS_CAUSE_BACKED_OFF: DiagnosisCause
DIAGNOSIS_CAUSE_ACL_DENIED: DiagnosisCause
DIAGNOSIS_CAUSE_ROOM_UNKNOWN: DiagnosisCause
DIAGNOSIS_CAUSE_SERVICE_UNAVAILABLE: DiagnosisCause
DIAGNOSIS_CAUSE_SERVER_BLOCKED: DiagnosisCause

class QueryOwnServerKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueryOwnServerKeysResponse(_message.Message):
    __slots__ = ("server_keys_json",)
    SERVER_KEYS_JSON_FIELD_NUMBER: _ClassVar[int]
    server_keys_json: bytes
    def __init__(self, server_keys_json: _Optional[bytes] = ...) -> None: ...

class ServerKeyCriteria(_message.Message):
    __slots__ = ("server_name", "key_ids", "minimum_valid_until_ts")
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_VALID_UNTIL_TS_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    key_ids: _containers.RepeatedScalarFieldContainer[str]
    minimum_valid_until_ts: int
    def __init__(self, server_name: _Optional[str] = ..., key_ids: _Optional[_Iterable[str]] = ..., minimum_valid_until_ts: _Optional[int] = ...) -> None: ...

class QueryServerKeysRequest(_message.Message):
    __slots__ = ("criteria",)
    CRITERIA_FIELD_NUMBER: _ClassVar[int]
    criteria: _containers.RepeatedCompositeFieldContainer[ServerKeyCriteria]
    def __init__(self, criteria: _Optional[_Iterable[_Union[ServerKeyCriteria, _Mapping]]] = ...) -> None: ...

class QueryServerKeysResponse(_message.Message):
    __slots__ = ("server_keys_json",)
    SERVER_KEYS_JSON_FIELD_NUMBER: _ClassVar[int]
    server_keys_json: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, server_keys_json: _Optional[_Iterable[bytes]] = ...) -> None: ...

class VerifyKeyLookup(_message.Message):
    __slots__ = ("server_name", "key_id", "at_ts")
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    AT_TS_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    key_id: str
    at_ts: int
    def __init__(self, server_name: _Optional[str] = ..., key_id: _Optional[str] = ..., at_ts: _Optional[int] = ...) -> None: ...

class QueryVerifyKeysRequest(_message.Message):
    __slots__ = ("lookups",)
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    lookups: _containers.RepeatedCompositeFieldContainer[VerifyKeyLookup]
    def __init__(self, lookups: _Optional[_Iterable[_Union[VerifyKeyLookup, _Mapping]]] = ...) -> None: ...

class ResolvedVerifyKey(_message.Message):
    __slots__ = ("server_name", "key_id", "found", "key", "valid_until_ts", "expired_ts", "usable_until_ts")
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_TS_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_TS_FIELD_NUMBER: _ClassVar[int]
    USABLE_UNTIL_TS_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    key_id: str
    found: bool
    key: str
    valid_until_ts: int
    expired_ts: int
    usable_until_ts: int
    def __init__(self, server_name: _Optional[str] = ..., key_id: _Optional[str] = ..., found: _Optional[bool] = ..., key: _Optional[str] = ..., valid_until_ts: _Optional[int] = ..., expired_ts: _Optional[int] = ..., usable_until_ts: _Optional[int] = ...) -> None: ...

class QueryVerifyKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ResolvedVerifyKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ResolvedVerifyKey, _Mapping]]] = ...) -> None: ...

class JsonToVerify(_message.Message):
    __slots__ = ("json", "server_name", "at_ts", "enforce_key_validity", "signed_json", "signatures")
    class SignaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JSON_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    AT_TS_FIELD_NUMBER: _ClassVar[int]
    ENFORCE_KEY_VALIDITY_FIELD_NUMBER: _ClassVar[int]
    SIGNED_JSON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    json: bytes
    server_name: str
    at_ts: int
    enforce_key_validity: bool
    signed_json: bytes
    signatures: _containers.ScalarMap[str, str]
    def __init__(self, json: _Optional[bytes] = ..., server_name: _Optional[str] = ..., at_ts: _Optional[int] = ..., enforce_key_validity: _Optional[bool] = ..., signed_json: _Optional[bytes] = ..., signatures: _Optional[_Mapping[str, str]] = ...) -> None: ...

class VerifyJsonSignaturesRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[JsonToVerify]
    def __init__(self, items: _Optional[_Iterable[_Union[JsonToVerify, _Mapping]]] = ...) -> None: ...

class VerifyResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: str
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class VerifyJsonSignaturesResponse(_message.Message):
    __slots__ = ("results", "keys")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[VerifyResult]
    keys: _containers.RepeatedCompositeFieldContainer[ResolvedVerifyKey]
    def __init__(self, results: _Optional[_Iterable[_Union[VerifyResult, _Mapping]]] = ..., keys: _Optional[_Iterable[_Union[ResolvedVerifyKey, _Mapping]]] = ...) -> None: ...

class RequestSignature(_message.Message):
    __slots__ = ("key_id", "sig")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIG_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    sig: str
    def __init__(self, key_id: _Optional[str] = ..., sig: _Optional[str] = ...) -> None: ...

class VerifyRequestRequest(_message.Message):
    __slots__ = ("method", "uri", "origin", "destination", "content", "signatures")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    method: str
    uri: str
    origin: str
    destination: str
    content: bytes
    signatures: _containers.RepeatedCompositeFieldContainer[RequestSignature]
    def __init__(self, method: _Optional[str] = ..., uri: _Optional[str] = ..., origin: _Optional[str] = ..., destination: _Optional[str] = ..., content: _Optional[bytes] = ..., signatures: _Optional[_Iterable[_Union[RequestSignature, _Mapping]]] = ...) -> None: ...

class VerifyRequestResponse(_message.Message):
    __slots__ = ("ok", "error", "keys")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: str
    keys: _containers.RepeatedCompositeFieldContainer[ResolvedVerifyKey]
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[ResolvedVerifyKey, _Mapping]]] = ...) -> None: ...

class PerformKeyRotationRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PerformKeyRotationResponse(_message.Message):
    __slots__ = ("new_key_id", "old_key_id", "expired_ts")
    NEW_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    OLD_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_TS_FIELD_NUMBER: _ClassVar[int]
    new_key_id: str
    old_key_id: str
    expired_ts: int
    def __init__(self, new_key_id: _Optional[str] = ..., old_key_id: _Optional[str] = ..., expired_ts: _Optional[int] = ...) -> None: ...

class QueryFederationReportRequest(_message.Message):
    __slots__ = ("server_name", "room_ids")
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    ROOM_IDS_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    room_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, server_name: _Optional[str] = ..., room_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DiagnosisStepResult(_message.Message):
    __slots__ = ("step", "outcome", "cause", "summary", "duration_us", "details_json")
    STEP_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    DURATION_US_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    step: DiagnosisStep
    outcome: DiagnosisOutcome
    cause: DiagnosisCause
    summary: str
    duration_us: int
    details_json: bytes
    def __init__(self, step: _Optional[_Union[DiagnosisStep, str]] = ..., outcome: _Optional[_Union[DiagnosisOutcome, str]] = ..., cause: _Optional[_Union[DiagnosisCause, str]] = ..., summary: _Optional[str] = ..., duration_us: _Optional[int] = ..., details_json: _Optional[bytes] = ...) -> None: ...

class FederationVerdict(_message.Message):
    __slots__ = ("outcome", "cause", "step", "summary", "other_causes")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    OTHER_CAUSES_FIELD_NUMBER: _ClassVar[int]
    outcome: DiagnosisOutcome
    cause: DiagnosisCause
    step: DiagnosisStep
    summary: str
    other_causes: _containers.RepeatedScalarFieldContainer[DiagnosisCause]
    def __init__(self, outcome: _Optional[_Union[DiagnosisOutcome, str]] = ..., cause: _Optional[_Union[DiagnosisCause, str]] = ..., step: _Optional[_Union[DiagnosisStep, str]] = ..., summary: _Optional[str] = ..., other_causes: _Optional[_Iterable[_Union[DiagnosisCause, str]]] = ...) -> None: ...

class FederationReport(_message.Message):
    __slots__ = ("server_name", "own_server", "checked_by", "started_ts", "duration_us", "steps", "verdict")
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    OWN_SERVER_FIELD_NUMBER: _ClassVar[int]
    CHECKED_BY_FIELD_NUMBER: _ClassVar[int]
    STARTED_TS_FIELD_NUMBER: _ClassVar[int]
    DURATION_US_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    own_server: bool
    checked_by: str
    started_ts: int
    duration_us: int
    steps: _containers.RepeatedCompositeFieldContainer[DiagnosisStepResult]
    verdict: FederationVerdict
    def __init__(self, server_name: _Optional[str] = ..., own_server: _Optional[bool] = ..., checked_by: _Optional[str] = ..., started_ts: _Optional[int] = ..., duration_us: _Optional[int] = ..., steps: _Optional[_Iterable[_Union[DiagnosisStepResult, _Mapping]]] = ..., verdict: _Optional[_Union[FederationVerdict, _Mapping]] = ...) -> None: ...

class QueryFederationReportResponse(_message.Message):
    __slots__ = ("step", "report")
    STEP_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    step: DiagnosisStepResult
    report: FederationReport
    def __init__(self, step: _Optional[_Union[DiagnosisStepResult, _Mapping]] = ..., report: _Optional[_Union[FederationReport, _Mapping]] = ...) -> None: ...
