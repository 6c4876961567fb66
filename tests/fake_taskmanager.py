"""A strict in-process PrismQ TaskManager: a real HTTP server on 127.0.0.1, in a thread.

Written from the behaviour of the public server (Nomoos/PrismQ.Client,
Backend/TaskManager: index.php, EndpointRouter, CustomHandlers,
seed_endpoints.sql), quirks included:

- X-API-Key on every request but /health; a wrong or missing key answers 401 with
  ``{"error":"Unauthorized","message":...,"timestamp":<ISO>}`` and Content-Type text/html.
- The envelope ``{"success","message","data","timestamp"}`` / ``{"success":false,"error","details"?}``.
- Validation as the router does it (PHP types: a JSON ``{}`` is an *array*, so params must
  be a non-empty object; progress must be a JSON integer 0..100; missing fields -> 400).
- ``GET /task-types`` fails with 500 (its ORDER BY template never resolves).
- An empty claim answers 500 "There is no active transaction" (the handler rolls back
  twice), or 404 "No available tasks" with ``empty_style="404"``.
- Ids come back as strings from some endpoints and integers from others.
- Complete stores an empty result as null; a failure goes back to pending while
  attempts < max_attempts ("pending (retry)"); progress does not extend a claim.
- ``rate_limit(n, retry_after)`` makes the next n requests answer 429 with Retry-After.

Stricter than PHP in one place: ``success`` must be a JSON boolean (PHP would take
"false" as true).

The clock can be moved forward (``advance``) to expire claims without waiting.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


class ApiError(Exception):
    def __init__(self, status: int, error: str, details: list[str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.details = status, error, details


def php_type(value: Any) -> str:
    """The router's getValueType: a JSON {} or [] decodes to an empty PHP array -> 'array'."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if value is None:
        return "null"
    if isinstance(value, list) or (isinstance(value, dict) and not value):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "unknown"


def php_truthy(value: Any) -> bool:
    return value not in (None, False, 0, 0.0, "", "0", [], {})


class FakeTaskManager:
    def __init__(self, *, api_key: str = "secret", claim_timeout: float = 300.0, max_attempts: int = 3,
                 empty_style: str = "500") -> None:
        self.api_key = api_key
        self.claim_timeout = claim_timeout
        self.max_attempts = max_attempts
        self.empty_style = empty_style
        self.types: dict[int, dict[str, Any]] = {}
        self.tasks: dict[int, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.lock = threading.RLock()
        self._offset = 0.0
        self._rate_limited = 0
        self._retry_after = "1"
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- test controls -------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/api"

    def now(self) -> float:
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        with self.lock:
            self._offset += seconds

    def rate_limit(self, n: int, retry_after: str = "1") -> None:
        with self.lock:
            self._rate_limited, self._retry_after = n, retry_after

    def add_type(self, name: str) -> int:
        with self.lock:
            type_id = len(self.types) + 1
            self.types[type_id] = {"id": type_id, "name": name, "version": "1.0.0",
                                   "param_schema": {"type": "object"}, "is_active": 1}
            return type_id

    def add_task(self, type_name: str, params: dict[str, Any], *, priority: int = 0) -> int:
        with self.lock:
            data = self._create({"type": type_name, "params": params})
            task_id = int(data["id"])
            self.tasks[task_id]["priority"] = priority
            return task_id

    def calls(self, method: str, prefix: str) -> list[Any]:
        with self.lock:
            return [body for m, p, body in self.requests if m == method and p.startswith(prefix)]

    # -- serving -------------------------------------------------------
    def start(self) -> FakeTaskManager:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-taskmanager", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeTaskManager:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(req.path)
        path = parts.path
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((method, path, _maybe_json(raw)))
            if self._rate_limited > 0:
                self._rate_limited -= 1
                body = {"error": "Too Many Requests", "message": "Rate limit exceeded.",
                        "retry_after": self._retry_after, "timestamp": _iso()}
                return _send(req, 429, body, ctype="text/html; charset=UTF-8",
                             headers={"Retry-After": self._retry_after})
            if not path.startswith("/api"):
                return _send(req, 404, {"success": False, "error": "Endpoint not found", "timestamp": int(time.time())})
            path = path[len("/api"):].rstrip("/") or "/"
            if path != "/health" and req.headers.get("X-API-Key") != self.api_key:
                body = {"error": "Unauthorized",
                        "message": "Invalid or missing API key. Include X-API-Key header with your request.",
                        "timestamp": _iso()}
                return _send(req, 401, body, ctype="text/html; charset=UTF-8")
            try:
                body = {}
                if method != "GET":
                    body = json.loads(raw or b"null")
                    if not isinstance(body, dict):
                        body = {}
                data = self._route(method, path, body, parse_qs(parts.query))
            except json.JSONDecodeError:
                return _send(req, 400, {"success": False, "error": "Invalid JSON in request body",
                                        "timestamp": int(time.time())})
            except ApiError as exc:
                out: dict[str, Any] = {"success": False, "error": exc.error, "timestamp": int(time.time())}
                if exc.details is not None:
                    out["details"] = exc.details
                return _send(req, exc.status, out)
            return _send(req, 200, {"success": True, "message": "Success", "data": data,
                                    "timestamp": int(time.time())})

    # -- the API ---------------------------------------------------------
    def _route(self, method: str, path: str, body: dict[str, Any], query: dict[str, list[str]]) -> Any:
        seg = [unquote(s) for s in path.strip("/").split("/")]
        if method == "GET" and path == "/health":
            return {"status": "healthy", "timestamp": int(time.time()), "database": "connected"}
        if method == "POST" and path == "/task-types/register":
            return self._register(body)
        if method == "GET" and path == "/task-types":
            raise ApiError(500, "Invalid ORDER BY clause")
        if method == "GET" and len(seg) == 2 and seg[0] == "task-types":
            items = [dict(t) for t in self.types.values() if t["name"] == seg[1]]
            return {"items": items, "count": len(items)}
        if method == "POST" and path == "/tasks":
            return self._create(body)
        if method == "GET" and path == "/tasks":
            return self._list(query)
        if method == "POST" and path == "/tasks/claim":
            return self._claim(body)
        if method == "POST" and len(seg) == 3 and seg[0] == "tasks" and seg[2] == "complete":
            return self._complete(seg[1], body)
        if method == "POST" and len(seg) == 3 and seg[0] == "tasks" and seg[2] == "progress":
            return self._progress(seg[1], body)
        if method == "GET" and len(seg) == 2 and seg[0] == "tasks":
            task = self.tasks.get(_int_or_none(seg[1]) or -1)
            items = [self._view(task)] if task else []
            return {"items": items, "count": len(items)}
        raise ApiError(404, "Endpoint not found")

    @staticmethod
    def _validate(body: dict[str, Any], rules: dict[str, dict[str, Any]]) -> None:
        errors = []
        for name, rule in rules.items():
            value = body.get(name)
            if rule.get("required") and value in (None, ""):
                errors.append(rule.get("message") or f"Field '{name}' is required")
                continue
            if value in (None, ""):
                continue
            if "type" in rule and php_type(value) != rule["type"]:
                errors.append(f"Field '{name}' must be of type {rule['type']}")
            if "minimum" in rule and isinstance(value, (int, float)) and value < rule["minimum"]:
                errors.append(f"Field '{name}' must be at least {rule['minimum']}")
            if "maximum" in rule and isinstance(value, (int, float)) and value > rule["maximum"]:
                errors.append(f"Field '{name}' must be at most {rule['maximum']}")
        if errors:
            raise ApiError(400, "Validation failed", errors)

    @staticmethod
    def _required(body: dict[str, Any], fields: tuple[str, ...], *, allow_empty: bool = False) -> None:
        for field in fields:
            if body.get(field) is None or (not allow_empty and body.get(field) == ""):
                raise ApiError(400, f"Missing required field: {field}")

    def _register(self, body: dict[str, Any]) -> dict[str, Any]:
        self._required(body, ("name", "version", "param_schema"))
        schema = body["param_schema"]
        if not isinstance(schema, dict) or "type" not in schema:
            raise ApiError(400, 'JSON schema must have a "type" property')
        for t in self.types.values():
            if t["name"] == body["name"].strip():
                t.update(version=body["version"], param_schema=schema, is_active=1)
                return {"id": t["id"], "name": t["name"], "version": t["version"], "updated": True}
        type_id = self.add_type(body["name"].strip())
        self.types[type_id].update(version=body["version"], param_schema=schema)
        return {"id": str(type_id), "name": body["name"], "version": body["version"], "created": True}

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        self._validate(body, {"type": {"type": "string", "required": True, "message": "Task type is required"},
                              "params": {"type": "object", "required": True,
                                         "message": "Task parameters are required"}})
        self._required(body, ("type", "params"))
        name = body["type"].strip()
        ttype = next((t for t in self.types.values() if t["name"] == name), None)
        if ttype is None:
            raise ApiError(404, "Task type not found")
        params_json = json.dumps(body["params"], separators=(",", ":"), ensure_ascii=False)
        dedupe = hashlib.sha256(f"{name}\0{params_json}".encode()).hexdigest()
        for task in self.tasks.values():
            if task["dedupe_key"] == dedupe:
                return {"id": str(task["id"]), "status": task["status"], "deduplicated": True,
                        "message": "Task already exists (deduplicated)"}
        task_id = len(self.tasks) + 1
        self.tasks[task_id] = {
            "id": task_id, "type_id": ttype["id"], "status": "pending", "params_json": params_json,
            "dedupe_key": dedupe, "result_json": None, "error_message": None, "priority": 0, "progress": 0,
            "attempts": 0, "claimed_by": None, "claimed_at": None, "completed_at": None, "created_at": self.now(),
        }
        return {"id": str(task_id), "type": name, "status": "pending", "dedupe_key": dedupe,
                "message": "Task created successfully"}

    def _claim(self, body: dict[str, Any]) -> dict[str, Any]:
        self._validate(body, {"worker_id": {"type": "string", "required": True, "message": "Worker ID is required"}})
        self._required(body, ("worker_id", "task_type_id"))
        type_id = _php_intval(body["task_type_id"])
        if type_id <= 0:
            raise ApiError(400, "task_type_id must be a positive integer")
        sort_by = str(body.get("sort_by") or "created_at").strip()
        order = str(body.get("sort_order") or "ASC").strip().upper()
        if sort_by not in ("created_at", "priority", "id", "attempts"):
            raise ApiError(400, "Invalid sort_by field. Allowed values: created_at, priority, id, attempts")
        if order not in ("ASC", "DESC"):
            raise ApiError(400, "Invalid sort_order. Allowed values: ASC, DESC")
        threshold = self.now() - self.claim_timeout
        ready = [t for t in self.tasks.values() if t["type_id"] == type_id and (
            t["status"] == "pending" or (t["status"] == "claimed" and t["claimed_at"] < threshold))]
        if not ready:
            if self.empty_style == "404":
                raise ApiError(404, "No available tasks")
            # The real handler rolls back, throws, and its catch rolls back again.
            raise ApiError(500, "There is no active transaction")
        ready.sort(key=lambda t: (t[sort_by], t["id"]), reverse=order == "DESC")
        task = ready[0]
        task.update(status="claimed", claimed_by=body["worker_id"].strip(), claimed_at=self.now(),
                    attempts=task["attempts"] + 1)
        return {"id": task["id"], "type": self.types[type_id]["name"], "params": json.loads(task["params_json"]),
                "attempts": task["attempts"], "priority": str(task["priority"]),
                "message": "Task claimed successfully"}

    def _owned(self, task_id: str, body: dict[str, Any]) -> dict[str, Any]:
        task = self.tasks.get(_int_or_none(task_id) or -1)
        if task is None:
            raise ApiError(404, "Task not found")
        if task["status"] != "claimed":
            raise ApiError(400, "Task is not in claimed state")
        if task["claimed_by"] != str(body["worker_id"]).strip():
            raise ApiError(403, "Task is claimed by another worker")
        return task

    def _complete(self, task_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self._required(body, ("worker_id", "success"), allow_empty=True)
        if not isinstance(body["success"], bool):
            raise ApiError(400, "Field 'success' must be of type boolean")
        task = self._owned(task_id, body)
        result = body.get("result")
        status = "completed" if body["success"] else "failed"
        task.update(status=status, error_message=body.get("error"), completed_at=self.now(),
                    result_json=json.dumps(result) if php_truthy(result) else None)
        if not body["success"] and task["attempts"] < self.max_attempts:
            task.update(status="pending", claimed_by=None, claimed_at=None)
            status = "pending (retry)"
        return {"id": task_id, "status": status, "message": "Task completed"}

    def _progress(self, task_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self._validate(body, {
            "worker_id": {"type": "string", "required": True, "message": "Worker ID is required"},
            "progress": {"type": "integer", "required": True, "minimum": 0, "maximum": 100,
                         "message": "Progress must be between 0 and 100"}})
        task = self._owned(task_id, body)
        task["progress"] = int(body["progress"])  # note: claimed_at is left alone
        return {"id": task_id, "progress": task["progress"], "message": "Task progress updated successfully"}

    def _list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        status = (query.get("status") or [None])[0]
        type_name = (query.get("type") or [None])[0]
        limit = _php_intval((query.get("limit") or ["50"])[0])
        items = [self._view(t) for t in sorted(self.tasks.values(), key=lambda t: -t["created_at"])
                 if (not status or t["status"] == status)
                 and (not type_name or self.types[t["type_id"]]["name"] == type_name)][:limit]
        for item in items:
            item.pop("params"), item.pop("result"), item.pop("error_message")
        return {"items": items, "count": len(items)}

    def _view(self, task: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": task["id"], "type": self.types[task["type_id"]]["name"], "status": task["status"],
            "params": json.loads(task["params_json"]),
            "result": json.loads(task["result_json"]) if task["result_json"] else None,
            "error_message": task["error_message"], "priority": task["priority"], "progress": task["progress"],
            "attempts": task["attempts"], "claimed_by": task["claimed_by"], "created_at": task["created_at"],
        }


def _send(req: BaseHTTPRequestHandler, status: int, body: Any, *, ctype: str = "application/json",
          headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    req.send_response(status)
    req.send_header("Content-Type", ctype)
    req.send_header("Content-Length", str(len(raw)))
    for k, v in (headers or {}).items():
        req.send_header(k, v)
    req.end_headers()
    req.wfile.write(raw)


def _iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _maybe_json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def _php_intval(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value)
    digits = ""
    for ch in str(value).strip():
        if ch.isdigit() or (ch == "-" and not digits):
            digits += ch
        else:
            break
    try:
        return int(digits)
    except ValueError:
        return 0


def _int_or_none(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None
