"""Who is calling, and may they: API keys, SigV4 (verified with botocore's own signer), IAM-like policies.

Identity-based policies as in IAM: each principal carries Allow/Deny statements on actions
(``sagemaker:InvokeEndpoint`` = ``invoke``, ``tritonctl:Admin`` = ``admin``), resources (endpoint ARNs) and
``StringLike``-style conditions on ``sagemaker:TargetModel``, ``sagemaker:TargetContainerHostname``,
``sagemaker:TargetVariant``. ``sagemaker:TargetModel`` is compared in canonical form on both sides: a request's
model name as it runs, and the policy's values with a leading ``/`` and a ``.tar.gz``/``.tgz`` suffix removed.
An explicit Deny wins; once any policy exists, whatever no statement allows is denied. Action names are
case-insensitive, as in IAM (a Deny on ``SageMaker:invokeEndpoint`` denies); resources and condition values are not.

A SigV4 signature must cover every header that decides what the request does: ``Content-Type`` (with SageMaker's
``json-header-size``), ``Inference-Header-Content-Length`` and every ``X-Amzn-SageMaker-*`` header (the target
model, variant, container, inference id, custom attributes). An unsigned one present in the request is refused, so a
captured request cannot be re-targeted; the AWS SDKs sign every header but a few hop-by-hop ones, so they comply.
Secrets come from the file or from the environment (``env:NAME``) and never appear in messages or logs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from toolkit.gateway.errors import AccessDeniedError, AuthError, GatewayConfigError
from toolkit.names import strip_target
from toolkit.spec.safeyaml import YamlInputError, parse, read_text

INVOKE = "sagemaker:InvokeEndpoint"
ADMIN = "tritonctl:Admin"
METRICS = "tritonctl:GetMetrics"  # read /metrics and the admin port's /models (admin implies it)
_ACTION_ALIASES = {"invoke": INVOKE, "admin": ADMIN, "metrics": METRICS}
_OPERATORS = ("StringLike", "StringNotLike", "StringEquals", "StringNotEquals")
TARGET_MODEL_KEY = "sagemaker:targetmodel"
MAX_CLOCK_SKEW_S = 300  # as AWS: a signature dated more than 5 minutes from the gateway's clock is refused
# Headers that change what a request does: present in a SigV4-signed request, they must be signed.
MUST_SIGN = frozenset({"content-type", "inference-header-content-length"})
MUST_SIGN_PREFIX = "x-amzn-sagemaker-"
_AUTH_RE = re.compile(r"^AWS4-HMAC-SHA256\s+Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]+)$")


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    """IAM wildcards: ``*`` any run, ``?`` one character; everything else literal."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + r"\Z", re.S)


def like(pattern: str, value: str) -> bool:
    return _glob(pattern).match(value) is not None


def _secret(value: Any, what: str) -> str:
    """A literal, or ``env:NAME`` read from the environment (missing variable = config error naming the variable)."""
    if not isinstance(value, str) or not value:
        raise GatewayConfigError(f"{what}: expected a non-empty string or env:NAME")
    if value.startswith("env:"):
        name = value[4:]
        got = os.environ.get(name)
        if not got:
            raise GatewayConfigError(f"{what}: environment variable {name} is not set")
        return got
    return value


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    return [str(x) for x in (v if isinstance(v, list) else [v])]


@dataclass(frozen=True)
class Statement:
    effect: str  # Allow | Deny
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: tuple[tuple[str, str, tuple[str, ...]], ...]  # (operator, key lower-case, values)

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str) -> Statement:
        d = {str(k).lower(): v for k, v in raw.items()}
        effect = str(d.get("effect", ""))
        if effect not in ("Allow", "Deny"):
            raise GatewayConfigError(f"{where}: Effect must be Allow or Deny, got {effect!r}")
        actions = tuple(_ACTION_ALIASES.get(a.lower(), a).lower() for a in _as_list(d.get("action")))
        if not actions:
            raise GatewayConfigError(f"{where}: Action is required (invoke, admin, sagemaker:InvokeEndpoint, ...)")
        resources = tuple(
            r if r.startswith("arn:") or r == "*" else f"arn:*:*:*:*:{r}" for r in _as_list(d.get("resource", "*"))
        )
        conds: list[tuple[str, str, tuple[str, ...]]] = []
        for op, kv in (d.get("condition") or {}).items():
            if op not in _OPERATORS:
                raise GatewayConfigError(
                    f"{where}: condition operator {op!r} unsupported (use {', '.join(_OPERATORS)})"
                )
            if not isinstance(kv, Mapping):
                raise GatewayConfigError(f"{where}: {op} needs a mapping of condition keys to values")
            for key, values in kv.items():
                k = str(key).lower()
                vals = _as_list(values)
                if k == TARGET_MODEL_KEY:  # requests carry the canonical name: so do the policy's values
                    vals = [strip_target(v) for v in vals]
                conds.append((op, k, tuple(vals)))
        unknown = set(d) - {"effect", "action", "resource", "condition", "sid"}
        if unknown:
            raise GatewayConfigError(f"{where}: unknown statement keys {sorted(unknown)}")
        return cls(effect, actions, resources, tuple(conds))

    def matches(self, action: str, resource: str, context: Mapping[str, str]) -> bool:
        if not any(like(a, action.lower()) for a in self.actions):  # IAM action names ignore case
            return False
        if not any(r == "*" or like(r, resource) for r in self.resources):
            return False
        for op, key, values in self.conditions:
            got = context.get(key)
            if op in ("StringLike", "StringEquals"):
                if got is None:
                    return False
                ok = any(like(v, got) if op == "StringLike" else v == got for v in values)
            else:
                ok = got is None or not any(like(v, got) if op == "StringNotLike" else v == got for v in values)
            if not ok:
                return False
        return True


@dataclass
class Principal:
    name: str
    statements: list[Statement] = field(default_factory=list)


ANONYMOUS = Principal("anonymous")


@dataclass
class AuthConfig:
    """Principals and their policies; an empty config means an open gateway (loopback development)."""

    principals: list[Principal] = field(default_factory=list)
    api_keys: dict[str, str] = field(default_factory=dict, repr=False)  # sha256(key) -> principal
    access_keys: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)  # id -> (principal, secret)
    region: str = "us-east-1"
    account: str = "000000000000"
    clock: Callable[[], float] = time.time  # what SigV4 dates are held to (tests hold it still)

    @property
    def enabled(self) -> bool:
        return bool(self.principals)

    @property
    def has_policies(self) -> bool:
        return any(p.statements for p in self.principals)

    def principal(self, name: str) -> Principal:
        return next(p for p in self.principals if p.name == name)

    @classmethod
    def load(cls, path: str | Path) -> AuthConfig:
        """Read with the manifest's bounded reader (toolkit.spec.safeyaml): non-UTF-8, deep nesting and alias bombs are
        one line each, and no error quotes the file (it holds secrets)."""
        p = Path(path)
        try:
            if p.suffix == ".json":
                raw = orjson.loads(read_text(p))
            else:
                raw, _ = parse(read_text(p))
        except YamlInputError as exc:
            what = "is not valid YAML" if exc.where == "<yaml>" else "cannot be read as text"
            raise GatewayConfigError(f"auth file {p} {what}: {exc}") from None
        except orjson.JSONDecodeError as exc:
            raise GatewayConfigError(f"auth file {p} is not valid JSON: {exc.msg} at position {exc.pos}") from None
        return cls.from_dict(raw or {}, str(p))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "auth") -> AuthConfig:
        if not isinstance(raw, Mapping):
            raise GatewayConfigError(f"{source}: expected a mapping with principals:")
        cfg = cls(region=str(raw.get("region", "us-east-1")), account=str(raw.get("account", "000000000000")))
        for i, pr in enumerate(raw.get("principals") or []):
            where = f"{source}: principals[{i}]"
            if not isinstance(pr, Mapping) or not pr.get("name"):
                raise GatewayConfigError(f"{where}: each principal needs a name")
            name = str(pr["name"])
            if any(p.name == name for p in cfg.principals):
                raise GatewayConfigError(f"{where}: principal {name!r} defined twice")
            stmts = pr.get("policy") or []
            if isinstance(stmts, Mapping):  # a whole IAM document {"Statement": [...]}
                stmts = stmts.get("Statement") or stmts.get("statement") or []
            principal = Principal(name, [Statement.parse(s, f"{where}.policy[{j}]") for j, s in enumerate(stmts)])
            cfg.principals.append(principal)
            for k, key in enumerate(_as_list(pr.get("api_keys"))):
                digest = hashlib.sha256(_secret(key, f"{where}.api_keys[{k}]").encode()).hexdigest()
                if digest in cfg.api_keys:
                    raise GatewayConfigError(f"{where}.api_keys[{k}]: the same API key is given to two principals")
                cfg.api_keys[digest] = name
            for k, ak in enumerate(pr.get("access_keys") or []):
                if not isinstance(ak, Mapping) or not ak.get("id") or "secret" not in ak:
                    raise GatewayConfigError(f"{where}.access_keys[{k}]: needs id and secret (literal or env:NAME)")
                cfg.access_keys[str(ak["id"])] = (name, _secret(ak["secret"], f"{where}.access_keys[{k}].secret"))
        return cfg

    # -- authentication ----------------------------------------------------------------------------------------------
    def authenticate(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> Principal:
        """The calling principal, or AuthError. Works on any case-insensitive header mapping."""
        if not self.enabled:
            return ANONYMOUS
        authz = headers.get("Authorization", "")
        key = headers.get("X-Api-Key") or (authz[7:].strip() if authz[:7].lower() == "bearer " else "")
        if key:
            name = self.api_keys.get(hashlib.sha256(key.encode()).hexdigest())
            if name is None:
                raise AuthError("The API key included in the request is invalid.")
            return self.principal(name)
        if authz.startswith("AWS4-HMAC-SHA256"):
            return self.principal(self._verify_sigv4(method, raw_path, headers, body, authz))
        raise AuthError(
            "Missing Authentication Token: sign the request (SigV4) or send an API key",
            code="MissingAuthenticationTokenException",
        )

    def _check_date(self, amz_date: str, scope_date: str) -> None:
        """X-Amz-Date well formed, the credential scope's day, and within the clock skew, past or future alike."""
        try:
            when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            raise AuthError("X-Amz-Date header missing or malformed", code="IncompleteSignatureException") from None
        if scope_date != amz_date[:8]:
            raise AuthError(
                f"Credential scope date {scope_date} does not match X-Amz-Date {amz_date}",
                code="InvalidSignatureException",
            )
        skew = abs(self.clock() - when.timestamp())
        if skew > MAX_CLOCK_SKEW_S:
            raise AuthError(
                f"Signature expired: {amz_date} is more than {MAX_CLOCK_SKEW_S} s from now",
                code="InvalidSignatureException",
            )

    @staticmethod
    def _check_signed(names: list[str], headers: Mapping[str, str]) -> None:
        """host, and every header that decides what the request does, must be among the signed ones."""
        if "host" not in names:
            raise AuthError("SignedHeaders must include host", code="InvalidSignatureException")
        unsigned = sorted(
            {k.lower() for k in headers if k.lower() in MUST_SIGN or k.lower().startswith(MUST_SIGN_PREFIX)}
            - set(names)
        )
        if unsigned:  # a captured request must not be re-targeted (or its body re-read) by an unsigned header
            raise AuthError(
                f"Headers that decide what the request does must be signed: {', '.join(unsigned)} not in SignedHeaders",
                code="InvalidSignatureException",
            )

    def _verify_sigv4(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes, authz: str) -> str:
        m = _AUTH_RE.match(authz.strip())
        if not m:
            raise AuthError(
                "Authorization header is not a well-formed AWS4-HMAC-SHA256 header", code="IncompleteSignatureException"
            )
        credential, signed, signature = m.groups()
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise AuthError(
                "Credential scope must be KEYID/DATE/REGION/SERVICE/aws4_request", code="IncompleteSignatureException"
            )
        key_id, date, region, service, _ = parts
        if service != "sagemaker" or region != self.region:  # a signature for another service/region is not ours
            raise AuthError(
                f"Credential should be scoped to a valid region and service: expected {self.region}/sagemaker, "
                f"got {region}/{service}",
                code="InvalidSignatureException",
            )
        entry = self.access_keys.get(key_id)
        if entry is None:
            raise AuthError("The security token included in the request is invalid.")
        principal, secret = entry
        amz_date = headers.get("X-Amz-Date", "")
        self._check_date(amz_date, date)
        names = signed.split(";")
        self._check_signed(names, headers)
        sent_hash = headers.get("X-Amz-Content-SHA256")
        if sent_hash is not None and sent_hash != hashlib.sha256(body).hexdigest():
            raise AuthError("X-Amz-Content-SHA256 does not match the body", code="InvalidSignatureException")
        req = AWSRequest(method=method, url=f"http://{headers.get('Host', '')}{raw_path}", data=body)
        getall = getattr(headers, "getall", None)
        for n in names:
            if n not in headers:
                raise AuthError(f"signed header {n!r} is missing from the request", code="InvalidSignatureException")
            for v in getall(n) if getall is not None else (headers[n],):  # a repeated header: every value is signed
                req.headers[n] = v  # (appends, as SigV4's canonical form lists them)
        req.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(key_id, secret), service, region)
        expected = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
        if not hmac.compare_digest(expected, signature):
            raise AuthError(
                "The request signature we calculated does not match the signature you provided.",
                code="InvalidSignatureException",
            )
        return principal

    # -- authorization -----------------------------------------------------------------------------------------------
    def endpoint_arn(self, endpoint: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:endpoint/{endpoint.lower()}"

    def admin_arn(self) -> str:
        return f"arn:aws:tritonctl:{self.region}:{self.account}:admin"

    def allowed(self, principal: Principal, action: str, resource: str, context: Mapping[str, str]) -> bool:
        if not self.enabled or not self.has_policies:
            return True
        ctx = {k.lower(): v for k, v in context.items() if v is not None}
        verdict = False
        for s in principal.statements:
            if s.matches(action, resource, ctx):
                if s.effect == "Deny":
                    return False
                verdict = True
        return verdict

    def authorize(
        self,
        principal: Principal,
        action: str,
        resource: str,
        context: Mapping[str, str | None],
        via: str | None = None,
    ) -> None:
        """AccessDeniedError unless allowed; ``via`` names the model through which this one would be reached."""
        ctx = {k: v for k, v in context.items() if v is not None}
        if not self.allowed(principal, action, resource, ctx):
            detail = "".join(f" with {k}={v}" for k, v in ctx.items())
            through = f" (reached through {via})" if via else ""
            raise AccessDeniedError(
                f"User: {principal.name} is not authorized to perform: {action} on resource: {resource}{detail}"
                f"{through}"
            )
