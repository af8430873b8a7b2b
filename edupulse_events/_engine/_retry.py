"""Which failures are worth retrying, and when.

`refusal` turns an error the broker sent in reply to a JetStream publish into the library's
error: `BrokerUnavailable` (transient: the publisher retries with the same ``Nats-Msg-Id``)
or `EventRejected` (permanent: the future fails at once). The decision is by JetStream
``err_code``, from nats-server's own error table (``server/errors.json`` and the publish
paths in ``stream.go``, ``jetstream_cluster.go`` and ``jetstream_batching.go``, read at
2.15; every code a publish can get back is listed below). Codes the table does not know
fall back to their status: 429 and 503 are "try again", anything else is permanent.

`Backoff` is tenacity's verdict for a failed attempt: whether to retry (a retryable error
type) and after how long (exponential backoff with jitter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tenacity

from ..config import RetryPolicy
from ..errors import BrokerError, BrokerUnavailable, EventRejected

if TYPE_CHECKING:
    from .._pipeline._routing import Group

__all__ = ["JS_PUBLISH_ERRORS", "Backoff", "batch_refusal", "refusal"]

#: err_code -> (nats-server's constant, transient). A transient error leaves the same bytes with
#: the same Nats-Msg-Id a chance later (or an ack as a duplicate); retrying a permanent one cannot help.
JS_PUBLISH_ERRORS: dict[int, tuple[str, bool]] = {
    # any publish
    10158: ("JSStreamDuplicateMessageConflict", True),  # 409: a copy with this id is proposed, not yet applied
    10167: ("JSStreamTooManyRequests", True),  # 429: the stream's ingest queue was full
    10023: ("JSInsufficientResourcesErr", True),  # 503: server store over its limit; an R>1 leader steps down
    10063: ("JSStreamSequenceNotMatchErr", True),  # 503: clustered apply saw a sequence mismatch; resyncs
    10163: ("JSStreamExpectedLastSeqPerSubjectNotReady", True),  # 503: temporarily unavailable
    10077: ("JSStreamStoreFailedF", False),  # 503: discard=new limits, > 32 MiB record ("store is closed": transient)
    10054: ("JSStreamMessageExceedsMaximumErr", False),  # larger than the stream's max_msg_size
    10097: ("JSStreamHeaderExceedsMaximumErr", False),  # header block over 64 KiB
    10109: ("JSStreamSealedErr", False),
    10002: ("JSAccountResourcesExceededErr", False),  # the account's JetStream quota is full
    10120: ("JSNoLimitsErr", False),  # no account limit for the stream's tier
    10060: ("JSStreamNotMatchErr", False),  # Nats-Expected-* headers (never sent by this library)
    10071: ("JSStreamWrongLastSequenceErrF", False),
    10164: ("JSStreamWrongLastSequenceConstantErr", False),
    10193: ("JSStreamExpectedLastSeqPerSubjectInvalid", False),
    10070: ("JSStreamWrongLastMsgIDErrF", False),
    10111: ("JSStreamRollupFailedF", False),
    10165: ("JSMessageTTLInvalidErr", False),
    10166: ("JSMessageTTLDisabledErr", False),
    10168: ("JSMessageIncrDisabledErr", False),
    10169: ("JSMessageIncrMissingErr", False),  # a counter stream captures the subject
    10170: ("JSMessageIncrPayloadErr", False),
    10171: ("JSMessageIncrInvalidErr", False),
    10172: ("JSMessageCounterBrokenErr", False),
    10188: ("JSMessageSchedulesDisabledErr", False),
    10189: ("JSMessageSchedulesPatternInvalidErr", False),
    10190: ("JSMessageSchedulesTargetInvalidErr", False),
    10191: ("JSMessageSchedulesTTLInvalidErr", False),
    10192: ("JSMessageSchedulesRollupInvalidErr", False),
    10203: ("JSMessageSchedulesSourceInvalidErr", False),
    10212: ("JSMessageSchedulesSchedulerInvalidErr", False),
    10223: ("JSMessageSchedulesTimeZoneInvalidErr", False),
    10227: ("JSMessageSourceHdrNotAllowedErr", False),
    # atomic and fast batch publishing (`batch_refusal` reads an atomic batch's commit answer)
    10174: ("JSAtomicPublishDisabledErr", False),
    10175: ("JSAtomicPublishMissingSeqErr", False),
    10176: ("JSAtomicPublishIncompleteBatchErr", False),  # transient for this library's batches: batch_refusal
    10177: ("JSAtomicPublishUnsupportedHeaderBatchErr", False),
    10179: ("JSAtomicPublishInvalidBatchIDErr", False),
    10185: ("JSRequiredApiLevelErr", False),
    10199: ("JSAtomicPublishTooLargeBatchErrF", False),
    10200: ("JSAtomicPublishInvalidBatchCommitErr", False),
    10201: ("JSAtomicPublishContainsDuplicateMessageErr", False),
    10210: ("JSAtomicPublishTooManyInflight", True),
    10205: ("JSBatchPublishDisabledErr", False),
    10206: ("JSBatchPublishInvalidPatternErr", False),
    10207: ("JSBatchPublishInvalidBatchIDErr", False),
    10208: ("JSBatchPublishUnknownBatchIDErr", False),
    10211: ("JSBatchPublishTooManyInflight", True),
}
_STORE_FAILED = 10077
_STORE_CLOSED = "store is closed"  # 10077's one transient case: the stream is being stopped
_TRY_AGAIN = (429, 503)


def is_transient(code: object, err_code: object, description: str) -> bool:
    """Whether a JetStream publish error may go away if the same message is sent again."""
    if err_code == _STORE_FAILED:
        return description == _STORE_CLOSED
    known = JS_PUBLISH_ERRORS.get(err_code) if isinstance(err_code, int) else None
    if known is not None:
        return known[1]
    return code in _TRY_AGAIN


def refusal(what: str, error: dict[str, Any]) -> BrokerError:
    """The library's error for a JetStream error object ``{"code", "err_code", "description"}``
    answering ``what`` (``"event <id>"``, or an atomic batch)."""
    code, err_code = error.get("code"), error.get("err_code")
    text = str(error.get("description", "unknown error"))
    known = JS_PUBLISH_ERRORS.get(err_code) if isinstance(err_code, int) else None
    name = f" {known[0]}" if known is not None else ""
    message = f"JetStream rejected {what}: {text} (code {code}, err_code {err_code}{name})"
    if is_transient(code, err_code, text):
        return BrokerUnavailable(message)
    return EventRejected(
        message,
        code=code if isinstance(code, int) else None,
        err_code=err_code if isinstance(err_code, int) else None,
    )


_BATCH_INCOMPLETE = 10176
_BATCH_DISABLED = 10174
_BATCH_DUPLICATE = 10201
_BATCH_TOO_LARGE = 10199


def batch_refusal(group: Group, error: dict[str, Any], resent: bool) -> BrokerError | None:
    """The library's error for a JetStream error object answering atomic batch ``group``'s
    commit, or None where it says the batch is stored: a batch ``resent`` after an attempt that
    got no answer, refused for holding event ids the stream has (10201), was stored by that
    attempt (the server stores a batch whole). "Incomplete" (10176) means the server dropped the
    batch before its commit — it is always sent whole — for a reason told to the event it
    refused: the batch is sent again with every event asking for an answer (`Group.verbose`),
    and that event's refusal, once known, is the batch's."""
    err_code = error.get("err_code")
    what = f"atomic batch of {len(group.items)} events (from event {group.items[0].event_id})"
    if err_code == _BATCH_DUPLICATE and resent:
        return None
    if err_code == _BATCH_INCOMPLETE:
        if group.refused is not None:
            item, reason = group.refused
            group.refused = None
            return refusal(f"{what}: its event {item.event_id}", reason)
        group.verbose = True
        return BrokerUnavailable(f"JetStream dropped the {what} before its commit (err_code 10176): sending it again")
    error = dict(error)
    if err_code == _BATCH_DISABLED:
        error["description"] = (
            "the stream does not allow atomic batches: set allow_atomic on it (nats-server 2.12 or later; "
            "create_stream=True creates streams that allow them)"
        )
    elif err_code == _BATCH_DUPLICATE:
        error["description"] = (
            "an event of the batch is stored already (published before, within the stream's duplicate window): "
            "the batch was refused whole, none of it stored"
        )
    elif err_code == _BATCH_TOO_LARGE:
        error["description"] = f"{error.get('description')}: set PublisherConfig.max_batch to the server's limit"
    return refusal(what, error)


class Backoff:
    """tenacity's verdict for a failed attempt: seconds to wait before the next, or None.

    Only retryable errors (``BrokerError.retryable``: `BrokerUnavailable`) are retried; the
    wait is exponential from ``policy.initial`` with up to ``policy.jitter`` s of jitter,
    capped at ``policy.maximum``. The delivery deadline, not tenacity, stops the retries.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self._retrying = tenacity.Retrying(
            wait=tenacity.wait_exponential(multiplier=policy.initial, max=policy.maximum, exp_base=policy.multiplier)
            + tenacity.wait_random(0, policy.jitter),
            retry=tenacity.retry_if_exception(_retryable),
            stop=tenacity.stop_never,
        )

    def delay(self, attempt: int, exc: BaseException) -> float | None:
        """The wait before retrying after failed attempt number ``attempt`` (1-based), or None."""
        retrying = self._retrying
        state = tenacity.RetryCallState(retrying, None, (), {})
        state.attempt_number = attempt
        state.set_exception((type(exc), exc, exc.__traceback__))
        if not retrying.retry(state):
            return None
        return float(retrying.wait(state))


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, BrokerError) and exc.retryable
