"""BraNet-PACS plugin for Orthanc (orthanc-python 4.0). Loaded by Orthanc as "PythonScript".

It translates Orthanc events into service calls and nothing more: STABLE_STUDY wakes the service's change feed,
ORTHANC_STARTED/STOPPED start and stop it, /branet/* REST requests are answered by it, incoming C-STOREs pass its
filter (`branet_pacs.orthanc.incoming`), and the Explorer gets the BraNet panel. Analysis runs in separate worker processes (torch is never imported inside Orthanc).

Needs the "BraNet" configuration section written by `branet orthanc run` (branet_pacs.orthanc.orthanc_config).
"""

import json
import logging
import site
import sys
from pathlib import Path

import orthanc

_SECTION = json.loads(orthanc.GetConfiguration()).get("BraNet")


class _OrthancLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        text = f"BraNet {record.name}: {self.format(record)}"
        if record.levelno >= logging.ERROR:
            orthanc.LogError(text)
        elif record.levelno >= logging.WARNING:
            orthanc.LogWarning(text)
        else:
            orthanc.LogInfo(text)


def _setup() -> None:
    site.addsitedir(_SECTION["SitePackages"])  # the venv (same CPython 3.11 as Orthanc's embedded one)
    if _SECTION["Repo"] not in sys.path:
        sys.path.insert(0, _SECTION["Repo"])
    handler = _OrthancLogHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("branet_pacs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


if not isinstance(_SECTION, dict):
    orthanc.LogError('BraNet plugin: no "BraNet" configuration section; generate the configuration with '
                     "`branet orthanc run`. The plugin stays inactive.")
else:
    _setup()

    from branet_pacs.orthanc.node import BraNetNode
    from branet_pacs.orthanc.rest import OrthancApi, OrthancError
    from branet_pacs.orthanc.settings import ServiceSettings
    from branet_pacs.orthanc.status import GLOBAL_PROPERTY_LAST_CHANGE

    _NOT_FOUND = {orthanc.ErrorCode.UNKNOWN_RESOURCE, orthanc.ErrorCode.INEXISTENT_ITEM,
                  orthanc.ErrorCode.INEXISTENT_FILE, orthanc.ErrorCode.UNKNOWN_MODALITY}

    class InProcessOrthanc(OrthancApi):
        """Orthanc's REST API called in-process (no HTTP, no credentials needed)."""

        def request(self, method, uri, body=None, content_type="application/octet-stream"):
            try:
                if method == "GET":
                    return orthanc.RestApiGet(uri)
                if method == "POST":
                    return orthanc.RestApiPost(uri, body or b"")
                if method == "PUT":
                    orthanc.RestApiPut(uri, body or b"")
                    return b""
                if method == "DELETE":
                    orthanc.RestApiDelete(uri)
                    return b""
            except orthanc.OrthancException as exc:
                code = exc.args[0] if exc.args else None
                raise OrthancError(method, uri, 404 if code in _NOT_FOUND else 500, str(exc)) from exc
            raise ValueError(f"unsupported method {method}")

    def _get_watermark():
        value = orthanc.GetGlobalProperty(GLOBAL_PROPERTY_LAST_CHANGE, "")
        return int(value) if value else None

    def _set_watermark(seq):
        orthanc.SetGlobalProperty(GLOBAL_PROPERTY_LAST_CHANGE, str(seq))

    _node = BraNetNode(InProcessOrthanc(), ServiceSettings.from_orthanc_config(json.loads(orthanc.GetConfiguration())),
                       _get_watermark, _set_watermark)

    def _on_change(change_type, level, resource_id):
        if change_type == orthanc.ChangeType.STABLE_STUDY:
            _node.wake()
        elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
            try:
                _node.start()
                orthanc.LogWarning(f"BraNet service started ({_SECTION['Workers']} worker(s), state in "
                                   f"{_SECTION['StateDirectory']})")
            except Exception as exc:  # noqa: BLE001 - Orthanc keeps running; the reason is in its log
                orthanc.LogError(f"BraNet service could not start: {type(exc).__name__}: {exc}")
        elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            _node.stop()

    # C-STORE statuses the filter answers with (orthanc-python 4.0 sends a non-zero value to the SCU as the DIMSE
    # status and does not store the instance; 0 stores it): PS3.4 Table GG.4-1
    _ACCEPT, _OUT_OF_RESOURCES, _DOES_NOT_MATCH = 0, 0xA700, 0xA900

    def _incoming_filter(received):
        """Refuse, before Orthanc stores it, what the pipeline would refuse (too large, or not identifiable)."""
        try:
            tags = json.loads(received.GetInstanceSimplifiedJson())
            reason = _node.refuse_incoming(tags, received.GetInstanceSize())
        except Exception as exc:  # noqa: BLE001 - the filter must never take a store down with it
            orthanc.LogWarning(f"BraNet incoming filter: {type(exc).__name__}: {exc}; the instance is stored")
            return _ACCEPT
        if not reason:
            return _ACCEPT
        return _DOES_NOT_MATCH if reason.startswith("missing") else _OUT_OF_RESOURCES

    def _on_rest(output, uri, **request):
        body = request.get("body") or b""
        response = _node.handle(request["method"], request["groups"][0], body)
        if response.status == 200:
            output.AnswerBuffer(response.body, response.content_type)
        elif response.status == 405:
            output.SendMethodNotAllowed(response.allowed)
        else:
            text = response.body.decode("utf-8")  # orthanc-python 4.0 wants (status, str, length)
            output.SendHttpStatus(response.status, text, len(response.body))

    from branet_pacs.orthanc.viewer import ViewerFiles

    _viewer = ViewerFiles(Path(_SECTION["OhifDirectory"]))

    def _on_viewer(output, uri, **request):
        """OHIF's files under /ohif/ (Orthanc authenticated the request before this callback runs)."""
        if request["method"] != "GET":
            output.SendMethodNotAllowed("GET")
            return
        groups = request.get("groups") or []
        answer = _viewer.answer(groups[0] if groups and groups[0] else "")
        if answer.status == 200:
            output.AnswerBuffer(answer.body, answer.content_type)
        else:
            output.SendHttpStatus(answer.status, answer.body.decode("utf-8"), len(answer.body))

    orthanc.RegisterOnChangeCallback(_on_change)
    orthanc.RegisterRestCallback("/ohif", _on_viewer)
    orthanc.RegisterRestCallback("/ohif/(.*)", _on_viewer)
    orthanc.RegisterIncomingCStoreInstanceFilter(_incoming_filter)
    orthanc.RegisterRestCallback("/branet/(.*)", _on_rest)
    orthanc.ExtendOrthancExplorer((Path(__file__).with_name("explorer.js")).read_text(encoding="utf-8"))
