"""``fedcommons audit serve``: the ledger as read-only web pages and a JSON API, behind tokens.

Every page and every ``/api/`` call needs a token the operator issued
(``fedcommons operator token issue``): as ``Authorization: Bearer <token>``,
or the HttpOnly, SameSite=Strict cookie ``/login`` sets from one. A missing,
wrong, expired or revoked token gets 401. The ledger is opened read-only
(the database refuses writes); no route writes, and only ``/login`` takes a
POST (it sets the cookie). Errors are one line of JSON or a short page,
never a traceback, and never the ledger's URL.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from audit.web.jobs import VerifyJobs
from audit.web.plots import line_chart
from audit.web.views import LedgerView, NotFound
from ledger import Ledger
from ledger.tokens import check_token

__all__ = ["COOKIE", "create_app"]

COOKIE = "fedcommons_token"
MAX_ID = 2**62
TEMPLATES = Path(__file__).parent / "templates"


def reader(request: Request) -> str:
    """The name of the token the request carries (header or cookie); 401 otherwise."""
    header = request.headers.get("authorization", "")
    presented = header[7:].strip() if header.lower().startswith("bearer ") else None
    presented = presented or request.cookies.get(COOKIE)
    with request.app.state.ledger.session() as session:
        name = check_token(session, presented)
    if name is None:
        raise HTTPException(401, "a valid token is needed", {"WWW-Authenticate": "Bearer"})
    return name


Reader = Annotated[str, Depends(reader)]
RunId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
Seq = Annotated[int, PathParam(ge=0, le=MAX_ID)]
JobId = Annotated[str, PathParam(pattern="^[0-9a-f]{32}$")]


def create_app(
    ledger_url: str,
    operator: Ed25519PublicKey | None = None,
    consortium: str | None = None,
    *,
    origin: str | None = None,
) -> FastAPI:
    """The dashboard for the ledger at ``ledger_url`` (opened read-only).

    ``operator`` lets "verify now" check the tree heads' signatures and the
    release view check each model card (:func:`audit.cards.check_card`);
    ``consortium`` is the name the overview shows and ``origin`` the log
    origin cards are checked against (both from ``consortium.json``).
    """
    ledger = Ledger(ledger_url, read_only=True)
    view = LedgerView(operator, origin)
    jobs = VerifyJobs(ledger, operator)
    templates = Jinja2Templates(directory=str(TEMPLATES))
    app = FastAPI(
        title="FedCommons ledger (read-only)",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the token like everything else
    )
    app.state.ledger = ledger

    def read(what: Callable[..., Any], *args: Any) -> Any:
        with ledger.session() as session:
            try:
                return what(session, *args)
            except NotFound as err:
                raise HTTPException(404, str(err)) from None

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.detail}, exc.status_code, headers=headers)
        if exc.status_code == 401:
            return page_401(request, "Give a token to read this ledger.", headers)
        detail = escape(str(exc.detail))
        body = f"<h1>{exc.status_code}</h1><p>{detail}</p><p><a href='/'>overview</a></p>"
        return HTMLResponse(body, exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors())
        message = f"bad request: {where or 'input'} is not valid"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, 400)
        return HTMLResponse(f"<h1>400</h1><p>{escape(message)}</p>", 400)

    def page_401(request: Request, message: str, headers: Any = None) -> HTMLResponse:
        response = page(request, "login.html", message=message)
        response.status_code = 401
        if headers:
            response.headers.update(headers)
        return response

    # -- login ------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request) -> HTMLResponse:
        return page(request, "login.html", message="")

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        body = (await request.body())[:4096].decode("utf-8", "replace")
        token = (parse_qs(body).get("token") or [""])[0].strip()
        with ledger.session() as session:
            if check_token(session, token) is None:
                return page_401(request, "That token is not valid (wrong, expired or revoked).")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    @app.get("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- the JSON API ---------------------------------------------------------------------

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(_: Reader) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/api/overview", summary="Participants, datasets and the latest signed tree head")
    def api_overview(_: Reader) -> dict[str, Any]:
        return {"consortium": consortium, **read(view.overview)}

    @app.get("/api/runs", summary="Every run: status, policy hash, rounds")
    def api_runs(_: Reader) -> list[dict[str, Any]]:
        return read(view.runs)  # type: ignore[no-any-return]

    @app.get("/api/runs/{run_id}", summary="A run: rounds, ε, exclusions, defences, contributions")
    def api_run(run_id: RunId, _: Reader) -> dict[str, Any]:
        run, _ = read(view.cached_run, run_id, _with_charts)
        return run  # type: ignore[no-any-return]

    @app.get("/api/entries/{seq}", summary="A ledger entry with its inclusion proof")
    def api_entry(seq: Seq, _: Reader) -> JSONResponse:
        doc = read(view.entry, seq)
        disposition = {"Content-Disposition": f'inline; filename="entry-{seq}.json"'}
        return JSONResponse(doc, headers=disposition)

    @app.get("/api/verify", summary="Start (or join) a full verification of the ledger")
    def api_verify(_: Reader) -> dict[str, Any]:
        return jobs.start().public()

    @app.get("/api/verify/{job_id}", summary="A verification's state and result")
    def api_verify_job(job_id: JobId, _: Reader) -> dict[str, Any]:
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such verification")
        return job.public()

    # -- pages ----------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview_page(request: Request, who: Reader) -> HTMLResponse:
        data = {"consortium": consortium, **read(view.overview)}
        return page(request, "overview.html", who=who, data=data)

    @app.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def runs_page(request: Request, who: Reader) -> HTMLResponse:
        return page(request, "runs.html", who=who, runs=read(view.runs))

    @app.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def run_page(request: Request, run_id: RunId, who: Reader) -> HTMLResponse:
        run, charts = read(view.cached_run, run_id, _with_charts)
        return page(request, "run.html", who=who, run=run, charts=charts)

    @app.get("/entries/{seq}", response_class=HTMLResponse, include_in_schema=False)
    def entry_page(request: Request, seq: Seq, who: Reader) -> HTMLResponse:
        return page(request, "entry.html", who=who, entry=read(view.entry, seq))

    return app


def _with_charts(run: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    return run, _charts(run)


def _charts(run: dict[str, Any]) -> dict[str, str]:
    rounds = run["rounds"]
    budget = run["epsilon_budget"]
    return {
        "accuracy": line_chart(
            "Validation accuracy per round",
            {"accuracy": [(r["round"], r["accuracy"]) for r in rounds]},
            y_label="accuracy",
        ),
        "loss": line_chart(
            "Validation loss per round",
            {"loss": [(r["round"], r["loss"]) for r in rounds]},
            y_label="loss",
        ),
        "epsilon": line_chart(
            "ε spent per institution (cumulative)",
            {
                name: [(p["round"], p["epsilon"]) for p in points]
                for name, points in sorted(run["epsilon"].items())
            },
            y_label="ε",
            limit=budget,
            limit_label=f"budget ε = {budget:g}" if budget is not None else "",
        ),
    }
