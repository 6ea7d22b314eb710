"""The review web app (FastAPI, server-rendered Jinja2 pages, a little plain JS).

Routes (every one has an access test in tests/test_review_access.py):

| route | who |
| --- | --- |
| GET /healthz, GET/POST /login, static files | anyone (POST /login is throttled) |
| POST /logout | any logged-in user |
| GET / , GET /queue | logged in (reviewers: their assigned units) |
| GET /passages/{id}, POST /passages/{id}/decide | admin, or the reviewer assigned to it |
| GET /codes | logged in (codebook search, JSON) |
| GET /admin, POST /admin/assign, GET /admin/export/* | admin |

A unit of review (``/passages/{id}``: a chunk, or a sentence passage of an older store)
is coded with spans (``decisions``). Every state change is a POST carrying the session's
CSRF token; decisions also carry the review-state version they were made against. A
stale one is a conflict: the browser is sent back to the unit page (post-redirect-get,
``?conflict=<version seen>&sel=<item>``), which names who changed it and keeps the
selection; a client asking for JSON gets HTTP 409. A refused decision (bad input, a
span in context, Done with undecided proposals) is answered 400/413 with the unit page
and the reason. Everybody acting on a unit works on its one shared coding track, except
the two reviewers of a double-coded unit, who each have their own blind track
(``decisions.choose_track``); a reviewer never sees another reviewer's blind track.

Sessions are server-side rows (``auth.Sessions``); logins are throttled per account and
per address (``throttle``) and every login, failure, logout and account change lands in
the audit log (``audit``). Every number and text read from a request is bounded
(``inputs``): a bad one gets HTTP 400 (413 when too large) naming the field. Errors are
HTML pages, or JSON for a request that asks for JSON only.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from qualflow.cells import safe_cell
from qualflow.db import AssignmentRow, DecisionRow, UserRow
from qualflow.review import auth, decisions, queue
from qualflow.review.audit import AuditLog
from qualflow.review.codes import codebook_for, rank, workspace_examples
from qualflow.review.inputs import (
    FORM_MAX_BYTES,
    MEMO_MAX_CHARS,
    SEARCH_MAX_CHARS,
    TEXT_FIELD_MAX_CHARS,
    BadInput,
    LimitBody,
    bounded_text,
    share,
    whole_number,
)
from qualflow.review.throttle import LoginThrottle, PasswordGate, ThrottlePolicy, Verdict
from qualflow.review.view import colour_of, unit_view
from qualflow.settings import Settings
from qualflow.store import Store

HERE = Path(__file__).parent
PAGE_ROWS = 100  # the queue page lists this many, then links to the next page

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


ERROR_TITLES = {
    400: "Bad request",
    401: "Log in required",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Too large",
    429: "Too many attempts",
}
DEFAULT_MESSAGES = {
    404: "There is no such page.",
    405: "This address does not take that kind of request (a form address opened as a "
    "page, perhaps). Go back to the queue.",
}
NEXT_MAX_CHARS = 2000
BUSY_MESSAGE = "The server is busy checking other logins. Try again in a second."


class LoginRequired(Exception):
    def __init__(self, next_url: str, stale_cookie: bool):
        self.next_url = next_url
        self.stale_cookie = stale_cookie


class Forbidden(Exception):
    def __init__(self, reason: str):
        self.reason = reason


class Auth:
    def __init__(self, session: auth.Session):
        self.session = session
        self.user = session.user
        self.csrf = session.csrf


def wants_json(request: Request) -> bool:
    """A request that asks for JSON and not for HTML (a script's fetch, an API client);
    browsers navigating send text/html, and ``*/*`` gets a page too."""
    accept = request.headers.get("accept", "").lower()
    return "application/json" in accept and "text/html" not in accept


def client_address(request: Request) -> str | None:
    """The client's address (behind a proxy, uvicorn's ``--forwarded-allow-ips`` makes
    this the forwarded one)."""
    return request.client.host if request.client else None


def safe_next(target: str) -> str:
    """A login redirect target inside this site, else /queue (no ``//host``, no
    backslash that browsers read as a slash, no control characters)."""
    if (
        not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or len(target) > NEXT_MAX_CHARS
        or any(ord(c) < 32 or ord(c) == 127 for c in target)
    ):
        return "/queue"
    return target


def wait_text(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return f"{round(seconds / 60)} minutes"


def throttled_message(verdict: Verdict) -> str:
    where = "for this user name" if verdict.scope == "account" else "from your network address"
    return (
        f"Too many failed logins {where}. Try again in {wait_text(verdict.retry_after)}; "
        "no password is checked until then. An admin can lift the wait sooner."
    )


def create_app(
    settings: Settings,
    store: Store | None = None,
    *,
    throttle_policy: ThrottlePolicy | None = None,
    clock: Callable[[], float] = time.time,
    password_checks_at_once: int | None = None,
) -> FastAPI:
    """The app for one workspace (opens and migrates its store unless one is given).

    ``clock`` (epoch seconds) stamps sessions and audit events and drives throttling.
    At most ``password_checks_at_once`` argon2 checks run at a time in this process
    (default ``throttle.default_checks_at_once``), one at a time per name and per address;
    a login beyond that is answered 429 at once (never parked in a server thread).
    """
    from qualflow.store import open_store

    store = store or open_store(settings)
    secret = auth.load_secret(
        settings.session_secret.get_secret_value() if settings.session_secret else None,
        settings.data_dir,
    )
    max_age = int(settings.session_hours * 3600)
    sessions = auth.Sessions(store, secret, max_age, clock)
    audit = AuditLog(store, secret, clock)
    throttle = LoginThrottle(audit, throttle_policy)
    gate = PasswordGate(password_checks_at_once)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["study_name"] = settings.study_name
    templates.env.globals["limits"] = {
        "memo": MEMO_MAX_CHARS,
        "search": SEARCH_MAX_CHARS,
        "text": TEXT_FIELD_MAX_CHARS,
    }
    templates.env.filters["pct"] = lambda x: f"{round(100 * x)}%" if x is not None else "–"

    app = FastAPI(title="qualflow review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.audit = audit
    app.state.throttle = throttle
    app.state.sessions = sessions
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    async def too_large(scope: dict[str, Any], status: int, message: str) -> Response:
        return error_page(Request(scope), status, message, None)

    app.add_middleware(LimitBody, max_bytes=FORM_MAX_BYTES, respond=too_large)

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            if k == "Cache-Control" and request.url.path.startswith("/static/"):
                continue
            response.headers.setdefault(k, v)
        return response

    # ----------------------------------------------------------------- errors

    def error_page(
        request: Request,
        status: int,
        message: str,
        a: Auth | None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """An error as an HTML page, or as ``{"detail": ...}`` for a JSON request."""
        if wants_json(request):
            return JSONResponse({"detail": message}, status_code=status, headers=headers)
        title = ERROR_TITLES.get(status, "Error")
        ctx = {"title": title, "message": message, "status": status}
        response = page(request, "error.html", a, ctx, status)
        response.headers.update(headers or {})
        return response

    def optional_who(request: Request) -> Auth | None:
        found = sessions.read(request.cookies.get(auth.SESSION_COOKIE))
        return Auth(found) if found else None

    @app.exception_handler(LoginRequired)
    def _login_required(request: Request, exc: LoginRequired):
        if request.method == "GET" and not wants_json(request):
            response: Response = RedirectResponse(
                "/login?" + urlencode({"next": exc.next_url}), status_code=303
            )
        else:
            message = "You are not logged in, or your session has ended. Log in again."
            response = error_page(request, 401, message, None)
        if exc.stale_cookie:
            response.delete_cookie(auth.SESSION_COOKIE)
        return response

    @app.exception_handler(Forbidden)
    def _forbidden(request: Request, exc: Forbidden):
        return error_page(request, 403, exc.reason, optional_who(request))

    @app.exception_handler(BadInput)
    def _bad_input(request: Request, exc: BadInput):
        return error_page(request, exc.status, str(exc), optional_who(request))

    @app.exception_handler(StarletteHTTPException)
    def _http_error(request: Request, exc: StarletteHTTPException):
        detail = str(exc.detail)
        if detail == HTTPStatus(exc.status_code).phrase:
            detail = DEFAULT_MESSAGES.get(exc.status_code, detail)
        return error_page(request, exc.status_code, detail, optional_who(request), exc.headers)

    @app.exception_handler(RequestValidationError)
    def _invalid_request(request: Request, exc: RequestValidationError):
        problems = [
            f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', '')}"
            for e in exc.errors()
        ]
        return error_page(request, 400, "; ".join(problems), optional_who(request))

    # ----------------------------------------------------------------- helpers

    def who(request: Request) -> Auth:
        cookie = request.cookies.get(auth.SESSION_COOKIE)
        found = sessions.read(cookie)
        if found is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise LoginRequired(safe_next(target), stale_cookie=bool(cookie))
        return Auth(found)

    def admin(request: Request) -> Auth:
        a = who(request)
        if not a.user.is_admin:
            raise Forbidden("This page is for admins.")
        return a

    def check_csrf(a: Auth, token: str | None) -> None:
        if not auth.same_token(a.csrf, token):
            raise Forbidden("The form's security token is missing or stale. Reload the page.")

    def page(
        request: Request, name: str, a: Auth | None, ctx: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        ctx = {"me": a.user if a else None, "csrf": a.csrf if a else "", **ctx}
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def filters_from(params: Any) -> queue.Filters:
        """The queue filters of a request; a bad value raises ``BadInput``."""

        def text(key: str) -> str | None:
            value = bounded_text(params.get(key), key, TEXT_FIELD_MAX_CHARS).strip()
            return value or None

        order, show = text("order") or "confidence", text("show") or "pending"
        if order not in queue.ORDERS:
            raise BadInput("order", f"'{order}' must be one of {', '.join(queue.ORDERS)}")
        if show not in queue.SHOW:
            raise BadInput("show", f"'{show}' must be one of {', '.join(queue.SHOW)}")
        return queue.Filters(
            transcript=text("transcript"),
            participant=text("participant"),
            code=text("code"),
            run=whole_number(params.get("run"), "run", minimum=1),
            coder=text("coder"),
            order=order,
            seed=whole_number(params.get("seed"), "seed", minimum=0, default=0) or 0,
            show=show,
            limit=whole_number(params.get("limit"), "limit", minimum=1),
        )

    def reachable(a: Auth, passage_id: str):
        """The passage and the user's assignment, or 404/403."""
        passage = store.passage(passage_id) if len(passage_id) <= TEXT_FIELD_MAX_CHARS else None
        if passage is None or not queue.in_queue(store, passage_id):
            raise HTTPException(404, "There is no such passage in the review queue.")
        assignment = queue.assignment_for(store, a.user.id, passage_id)
        if assignment is None and not a.user.is_admin:
            raise Forbidden("This passage is not assigned to you.")
        return passage, assignment

    def qs(filters: queue.Filters, **changes: object) -> str:
        """The filters (with ``changes``) as a query string; other keys (``after``,
        ``sel``) are added when given."""
        q = filters.query(**changes)
        known = set(queue.Filters.__dataclass_fields__)
        q.update({k: str(v) for k, v in changes.items() if k not in known and v is not None})
        return ("?" + urlencode(q)) if q else ""

    # ----------------------------------------------------------------- public

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/queue"):
        return login_page(request, safe_next(next), None, 200)

    def login_page(
        request: Request,
        next_url: str,
        error: str | None,
        status: int,
        headers: dict[str, str] | None = None,
    ):
        token, cookie = sessions.login_token()
        response = page(
            request,
            "login.html",
            None,
            {"login_csrf": token, "next": next_url, "error": error},
            status,
        )
        response.headers.update(headers or {})
        response.set_cookie(
            auth.LOGIN_CSRF_COOKIE,
            cookie,
            max_age=3600,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/login")
    def login(
        request: Request,
        username: str = Form(""),
        password: str = Form(""),
        csrf: str = Form(""),
        next: str = Form("/queue"),
    ):
        target = safe_next(next)
        if not sessions.check_login_token(request.cookies.get(auth.LOGIN_CSRF_COOKIE), csrf):
            return login_page(request, target, "Your login form expired. Please try again.", 403)
        name, address = username.strip(), client_address(request)
        verdict = throttle.check(name, address)
        if not verdict.allowed:  # answered at once: no password check, no sleeping
            if throttle.first_refusal(verdict, name, address):
                account = auth.user_by_name(store, name)
                audit.record(
                    "login_throttled",
                    username=account.username if account else None,
                    user_id=account.id if account else None,
                    typed_name=name,
                    address=address,
                    detail=f"per {verdict.scope}: {verdict.failures} failures, "
                    f"wait {verdict.retry_after} s",
                )
            headers = {"Retry-After": str(verdict.retry_after)}
            return login_page(request, target, throttled_message(verdict), 429, headers)
        with gate.admit(name, address) as admitted:
            if not admitted:  # argon2 busy (for this name or address): no queueing
                headers = {"Retry-After": "1"}
                return login_page(request, target, BUSY_MESSAGE, 429, headers)
            checked = auth.check_login(store, name, password)
        if checked.user is None:
            account = checked.account
            audit.record(
                "login_failed",
                username=account.username if account else None,
                user_id=account.id if account else None,
                typed_name=name,
                address=address,
                detail=checked.reason,
            )
            return login_page(request, target, "Wrong user name or password.", 401)
        user = checked.user
        value, _ = sessions.issue(user, address)
        audit.record(
            "login",
            username=user.username,
            user_id=user.id,
            actor=user.username,
            typed_name=name,
            address=address,
        )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            auth.SESSION_COOKIE,
            value,
            max_age=max_age,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        response.delete_cookie(auth.LOGIN_CSRF_COOKIE)
        return response

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")):
        a = who(request)
        check_csrf(a, csrf)
        sessions.end(a.session, "logout")
        audit.record(
            "logout",
            username=a.user.username,
            user_id=a.user.id,
            actor=a.user.username,
            address=client_address(request),
        )
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE)
        return response

    # ----------------------------------------------------------------- queue

    @app.get("/")
    def root(request: Request):
        who(request)
        return RedirectResponse("/queue", status_code=303)

    @app.get("/queue", response_class=HTMLResponse)
    def queue_page(request: Request):
        a = who(request)
        filters = filters_from(request.query_params)
        after = bounded_text(request.query_params.get("after"), "after", TEXT_FIELD_MAX_CHARS)
        with queue.synced(store):
            return queue_view(request, a, filters, after)

    def queue_view(request: Request, a: Auth, filters: queue.Filters, after: str):
        found = queue.rows(store, a.user, filters, after=after or None, size=PAGE_ROWS)
        ctx = {
            "filters": filters,
            "rows": found.rows,
            "shown": found.shown,
            "next_page": qs(filters, after=found.next_after) if found.next_after else None,
            "first_page": qs(filters) if after else None,
            "mine": found.progress,
            "study": queue.study_progress(store) if a.user.is_admin else None,
            "facets": queue.facets(store),
            "orders": queue.ORDERS,
            "shows": queue.SHOW,
            "qs": lambda **c: qs(filters, **c),
            "first": first_to_do(a, filters, found, after),
        }
        return page(request, "queue.html", a, ctx)

    def first_to_do(a: Auth, filters: queue.Filters, found: queue.Page, after: str) -> str | None:
        """Where "start reviewing" goes: on the first page of the "to do" list that is
        its first row (the same query would find it again), else a query."""
        if filters.show == "pending" and not after:
            return found.rows[0].passage_id if found.rows else None
        return queue.next_pending(store, a.user, filters, None)

    # ----------------------------------------------------------------- unit

    def render_unit(
        request: Request,
        a: Auth,
        passage_id: str,
        filters: queue.Filters,
        *,
        status: int = 200,
        conflict: str | None = None,
        error: str | None = None,
        selected: int | None = None,
    ) -> HTMLResponse:
        with queue.synced(store):
            return unit_page(request, a, passage_id, filters, status, conflict, error, selected)

    def unit_page(
        request: Request,
        a: Auth,
        passage_id: str,
        filters: queue.Filters,
        status: int,
        conflict: str | None,
        error: str | None,
        selected: int | None,
    ) -> HTMLResponse:
        unit, assignment = reachable(a, passage_id)
        blind = bool(assignment and assignment.blind_to_machine)
        codebook = codebook_for(store, passage_id)
        owner = decisions.track_owner(store, a.user.id, passage_id)
        history = decisions.track_log(store, owner, passage_id)
        st = decisions.derive(passage_id, owner, history)
        # every proposal of the unit (the run and coder filters choose queue units):
        # Done needs each of them decided, so each is shown
        uv = unit_view(store, unit, codebook=codebook, show_proposals=not blind, spans=st.spans)
        names = usernames()
        prev_id, next_id = queue.neighbours(store, a.user, filters, passage_id)
        pending = [p for p in uv.proposals if p.id not in st.proposal_status]
        items = len(uv.proposals) + len(uv.spans)
        if selected is None or not 0 < selected <= items:
            selected = pending[0].number if pending else (1 if items else 0)
        ctx = {
            "pv": uv,
            "uv": uv,
            "st": st,
            "blind": blind,
            "double": bool(assignment and assignment.double_coded),
            "history": list(reversed(history))[:8],
            "codebook": codebook,
            "code_info": {c.title: c for c in codebook.codes} if codebook else {},
            "colours": {c.title: colour_of(c.title, codebook) for c in codebook.codes}
            if codebook
            else {},
            "filters": filters,
            "back": qs(filters),
            "next_id": next_id,
            "prev_id": prev_id,
            "mine": queue.progress(store, a.user, filters),
            "selected": selected,
            "pending": len(pending) if not blind and not st.no_code else 0,
            "conflict": conflict,
            "error": error,
            "names": names,
            "shared_with": sharers(passage_id, owner, a, names),
            "others": others(passage_id, owner, names) if a.user.is_admin else [],
        }
        return page(request, "passage.html", a, ctx, status)

    def usernames() -> dict[int, str]:
        with store.session() as s:
            return dict(s.execute(select(UserRow.id, UserRow.username)).all())

    def sharers(passage_id: str, owner: int, a: Auth, names: dict[int, str]) -> list[str]:
        """Who else works on the shared track this user acts on (none on a blind one)."""
        with store.session() as s:
            rows = s.execute(
                select(AssignmentRow.user_id, AssignmentRow.double_coded).where(
                    AssignmentRow.passage_id == passage_id
                )
            ).all()
        if any(uid == a.user.id and double for uid, double in rows):
            return []
        ids = [owner] + [uid for uid, double in rows if not double]
        return [names.get(uid, str(uid)) for uid in dict.fromkeys(ids) if uid != a.user.id]

    def others(
        passage_id: str, owner: int, names: dict[int, str]
    ) -> list[tuple[str, decisions.ReviewState]]:
        """The unit's other tracks (admins only), labelled by their owner."""
        return [
            (names.get(uid, str(uid)), decisions.track_state(store, uid, passage_id))
            for uid in decisions.tracks(store, passage_id)
            if uid != owner
        ]

    def unit_url(passage_id: str, filters: queue.Filters, **extra: object) -> str:
        query = filters.query()
        query.update({k: str(v) for k, v in extra.items() if v not in (None, "")})
        return f"/passages/{passage_id}" + ("?" + urlencode(query) if query else "")

    @app.get("/passages/{passage_id}", response_class=HTMLResponse)
    def passage_page(request: Request, passage_id: str):
        a = who(request)
        params = request.query_params
        filters = filters_from(params)
        selected = whole_number(params.get("sel"), "sel", minimum=0)
        seen = whole_number(params.get("conflict"), "conflict", minimum=0)
        conflict = (
            decisions.describe_conflict(store, a.user.id, passage_id, seen)
            if seen is not None and len(passage_id) <= TEXT_FIELD_MAX_CHARS
            else None
        )
        return render_unit(request, a, passage_id, filters, conflict=conflict, selected=selected)

    @app.post("/passages/{passage_id}/decide")
    def decide(
        request: Request,
        passage_id: str,
        csrf: str = Form(""),
        action: str = Form(""),
        version: str = Form(""),
        proposal_id: str = Form(""),
        code: str = Form(""),
        memo: str | None = Form(None),
        start: str = Form(""),
        end: str = Form(""),
        new_start: str = Form(""),
        new_end: str = Form(""),
        sel: str = Form(""),
        go: str = Form(""),
    ):
        a = who(request)
        check_csrf(a, csrf)
        filters = filters_from(request.query_params)
        _, assignment = reachable(a, passage_id)
        blind = bool(assignment and assignment.blind_to_machine)
        if (action in decisions.PROPOSAL_ACTIONS or (action == "adjust" and proposal_id)) and blind:
            raise Forbidden("This unit is coded blind to the machine proposals.")
        selected = whole_number(sel, "sel", minimum=0)

        def refused(status: int, error: str) -> Response:
            """The unit again with the reason and the selection kept (the page puts its
            own address back in the location bar, so a reload does not post again)."""
            return render_unit(
                request, a, passage_id, filters, status=status, error=error, selected=selected
            )

        try:
            seen = whole_number(version, "version", minimum=0)
            if seen is None:
                raise BadInput("version", "missing from the form; reload the page")
            numbers = {
                name: whole_number(value, name, minimum=0)
                for name, value in (
                    ("start", start),
                    ("end", end),
                    ("new_start", new_start),
                    ("new_end", new_end),
                )
            }
            pid = whole_number(proposal_id, "proposal_id", minimum=1)
            bounded_text(action, "action", 40)
            code = bounded_text(code, "code", TEXT_FIELD_MAX_CHARS)
            if memo is not None:
                memo = bounded_text(memo, "memo", MEMO_MAX_CHARS, status=413)
            if action == "memo" and memo is None:
                memo = ""  # an empty memo box clears the memo
        except BadInput as exc:
            return refused(exc.status, str(exc))
        try:
            decisions.decide(
                store,
                a.user.id,
                passage_id,
                action,
                version=seen,
                proposal_id=pid,
                code=code or None,
                memo=memo,
                **numbers,
            )
        except decisions.Conflict as exc:
            if wants_json(request):
                return JSONResponse({"detail": str(exc)}, status_code=409)
            return RedirectResponse(
                unit_url(passage_id, filters, conflict=seen, sel=selected), status_code=303
            )
        except decisions.DecisionError as exc:
            return refused(400, str(exc))
        if go == "next":
            with queue.synced(store):
                target = queue.next_pending(store, a.user, filters, passage_id)
            url = unit_url(target, filters) if target else "/queue" + qs(filters)
        else:  # done: the page selects the next undecided proposal
            url = unit_url(passage_id, filters)
        return RedirectResponse(url, status_code=303)

    @app.get("/codes")
    def codes(request: Request, q: str = "", passage: str = "", limit: str = ""):
        who(request)
        query = bounded_text(q, "q", SEARCH_MAX_CHARS)
        passage = bounded_text(passage, "passage", TEXT_FIELD_MAX_CHARS)
        wanted = whole_number(limit, "limit", minimum=1, default=12) or 12
        codebook = codebook_for(store, passage or None)
        if codebook is None:
            return JSONResponse([])
        examples = workspace_examples(store, codebook)
        hits = rank(codebook, query, examples=examples, limit=min(wanted, 50))
        return JSONResponse(
            [
                {
                    "title": h.code.title,
                    "description": h.code.description,
                    "matched": list(h.matched),
                    "colour": colour_of(h.code.title, codebook),
                }
                for h in hits
            ]
        )

    # ----------------------------------------------------------------- admin

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page(request: Request, message: str = ""):
        a = admin(request)
        reconciled = queue.reconcile(store)
        ctx = {
            "loads": queue.reviewer_loads(store),
            "study": reconciled.study,
            "reconciled": reconciled,
            "strategies": ["balanced", "round_robin"],
            "message": bounded_text(message, "message", TEXT_FIELD_MAX_CHARS),
        }
        return page(request, "admin.html", a, ctx)

    @app.post("/admin/assign")
    def assign(
        request: Request,
        csrf: str = Form(""),
        reviewers: list[str] = Form(default_factory=list),
        strategy: str = Form("balanced"),
        double: str = Form("0"),
        seed: str = Form("0"),
        blind_machine: str = Form(""),
    ):
        a = admin(request)
        check_csrf(a, csrf)
        names = [bounded_text(r, "reviewers", auth.USERNAME_MAX_CHARS) for r in reviewers]
        double_share = share(double, "double")
        sample_seed = whole_number(seed, "seed", minimum=0, default=0) or 0
        try:
            report = queue.assign(
                store,
                names,
                strategy=bounded_text(strategy, "strategy", 40),
                double_share=double_share,
                seed=sample_seed,
                blind_machine=blind_machine == "on",
            )
        except ValueError as exc:
            message = f"Nothing assigned: {exc}"
        else:
            message = (
                f"Assigned {report.passages} units ({report.assignments} assignments, "
                f"{report.double_coded} double-coded)."
            )
        return RedirectResponse("/admin?" + urlencode({"message": message}), status_code=303)

    @app.get("/admin/export/codings.json")
    def export_codings(request: Request):
        admin(request)
        data = {
            name: {pid: sorted(codes) for pid, codes in coding.items()}
            for name, coding in decisions.reviewer_codings(store).items()
        }
        return Response(
            json.dumps(data, indent=1, sort_keys=True),
            media_type="application/json",
            headers={"Content-Disposition": 'attachment; filename="reviewer-codings.json"'},
        )

    @app.get("/admin/export/spans.json")
    def export_spans(request: Request):
        """Each reviewer's finished units as spans, with the text they answered for."""
        admin(request)
        data = {
            name: {
                "spans": [
                    {"transcript": sp.transcript_id, "start": sp.start, "end": sp.end,
                     "code": sp.code}
                    for sp in coding.spans
                ],
                "scope": {tid: [list(r) for r in ranges] for tid, ranges in coding.scope.items()},
            }
            for name, coding in decisions.reviewer_span_codings(store).items()
        }  # fmt: skip
        return Response(
            json.dumps(data, indent=1, sort_keys=True),
            media_type="application/json",
            headers={"Content-Disposition": 'attachment; filename="reviewer-spans.json"'},
        )

    @app.get("/admin/export/decisions.csv")
    def export_log(request: Request):
        """The decision log; every cell through ``safe_cell`` (no live formulas)."""
        admin(request)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(
            [
                "id",
                "time",
                "reviewer",
                "passage_id",
                "action",
                "proposal_id",
                "code",
                "before",
                "after",
                "memo",
                "undoes_id",
                "state_version",
                "track_owner",
                "span_start",
                "span_end",
                "new_start",
                "new_end",
                "spans_after",
            ]
        )
        with store.session() as s:
            names = dict(s.execute(select(UserRow.id, UserRow.username)).all())
            for r in s.scalars(select(DecisionRow).order_by(DecisionRow.id)):
                row = [
                    r.id,
                    r.created_at.isoformat(),
                    names.get(r.user_id),
                    r.passage_id,
                    r.action,
                    r.proposal_id or "",
                    r.code or "",
                    "|".join(r.before),
                    "|".join(r.after),
                    r.memo or "",
                    r.undoes_id or "",
                    r.state_version,
                    names.get(r.track_user_id if r.track_user_id is not None else r.user_id),
                    "" if r.span_start is None else r.span_start,
                    "" if r.span_end is None else r.span_end,
                    "" if r.new_start is None else r.new_start,
                    "" if r.new_end is None else r.new_end,
                    "|".join(
                        f"{sp['code']}@{sp['start']}-{sp['end']}:{sp.get('origin', '')}"
                        for sp in r.spans or []
                    ),
                ]
                w.writerow([safe_cell(cell) for cell in row])
        return Response(
            buf.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="decisions.csv"'},
        )

    return app


def freeze_start_up_objects() -> None:
    """Put what start-up built (modules, the app, its templates) out of the garbage
    collector's reach, in a server process about to serve.

    A full collection walks every tracked object, about 130k after start-up, and requests
    trigger one every few dozen: a pause of about 100 ms that was most of the unit
    page's p95 at 30k and 100k units (``benchmarks/review_scale.py``). Frozen objects
    are never collected, so this is for the server process only, not for tests that
    build many apps."""
    import gc

    gc.collect()
    gc.freeze()


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (the CLI with several workers): the workspace
    comes from QUALFLOW_WORKSPACE."""
    from qualflow.settings import load_settings

    app = create_app(load_settings())
    freeze_start_up_objects()
    return app
