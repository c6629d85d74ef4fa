"""The admin API at /admin/v1: JSON in and out, bearer admin keys, tenant-scoped keys see only their tenant."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, Response, jsonify, request

from broker.admin.openapi import openapi_document
from broker.admin.schema import MAX_JSON_DEPTH, DuplicateKey, TooDeep, loads_admin_json, unstorable_text
from broker.admin.service import check_precondition, etag, none_match_hit
from broker.errors import Forbidden, PayloadTooLarge, StateStoreError, Unauthorized, ValidationFailed
from broker.model import AdminKey
from broker.web.context import services
from broker.web.errors import admin_error

bp = Blueprint("admin_api", __name__, url_prefix="/admin/v1")

METADATA_TYPES = ("application/samlmetadata+xml", "application/xml", "text/xml")


@bp.before_request
def _announceable() -> None:
    """A configuration write is announced to every replica through the state store: when that cannot answer,
    the write is not made (503, nothing written) rather than committed and left unannounced."""
    if request.method in ("POST", "PUT", "PATCH", "DELETE") and not services().state.ping():
        raise StateStoreError("The state store is unavailable; nothing was changed. Try again shortly.")


@bp.after_request
def _cache_control(resp: Response) -> Response:
    """A write's answer may carry a secret shown once (a new admin key, an app's client_secret): never stored
    by a cache. Reads are per key and may be revalidated with their ETag, never shared."""
    if "Cache-Control" not in resp.headers:
        resp.headers["Cache-Control"] = "no-store" if request.method not in ("GET", "HEAD") else "private, no-cache"
    return resp


def _key() -> AdminKey:
    return services().admin.authenticate(request.headers.get("Authorization"))


@bp.errorhandler(Unauthorized)
def _unauthorized(err: Unauthorized) -> Response:
    """A 401 names the scheme to use (RFC 7235 §3.1, RFC 6750 §3), and says `invalid_token` when a key was
    presented but refused (AdminService.authenticate marks that case); the JSON body is the usual one."""
    resp = admin_error(err)
    challenge = 'Bearer realm="admin"'
    if err.detail == "invalid_token":
        challenge += ', error="invalid_token"'
    resp.headers["WWW-Authenticate"] = challenge
    return resp


def _body_bytes(limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    data = request.get_data(cache=False)
    if len(data) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    return data


def _json() -> Any:
    raw = _body_bytes(services().settings.max_json_bytes)
    ctype = (request.mimetype or "").lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ValidationFailed("Send the body as JSON (Content-Type: application/json).", code="invalid_request",
                               status=415)
    if not raw.strip():
        raise ValidationFailed("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = loads_admin_json(raw)
    except DuplicateKey as dup:
        member = dup.key[:200]
        raise ValidationFailed(f"The request body names the member {json.dumps(member)} more than once in one "
                               "object; send it once.", code="invalid_json", details={"member": member}) from None
    except (TooDeep, RecursionError):
        raise ValidationFailed(f"The request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep.",
                               code="invalid_json") from None
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed("The request body is not valid JSON.", code="invalid_json") from None
    where = unstorable_text(body)
    if where is not None:
        raise ValidationFailed(f"Invalid field {where}: it holds a NUL character or an unpaired surrogate "
                               "(\\u0000, \\ud800-\\udfff), which cannot be stored.", code="invalid_request",
                               details={"field": where})
    return body


def _optional_json() -> dict[str, Any] | None:
    """An optional JSON object body: None when there is no body; anything but an object is refused."""
    if not request.content_length and not request.get_data(cache=True):
        return None
    body = _json()
    if not isinstance(body, dict):
        raise ValidationFailed("The request body must be a JSON object.")
    return body


def _created(body: dict[str, Any]) -> Response:
    resp = _tagged(body)
    resp.status_code = 201
    return resp


def _tagged(body: dict[str, Any]) -> Response:
    """A tenant, connection or app as JSON, with its ETag (for If-Match on a later write)."""
    resp = jsonify(body)
    if isinstance(body.get("id"), str) and isinstance(body.get("version"), int):
        resp.headers["ETag"] = etag(body["id"], body["version"])
    return resp


ENTITY_TAG = re.compile(r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"')  # RFC 9110 §8.8.3


def _entity_tags(header: str) -> list[str] | None:
    """The entity tags of an If-Match or If-None-Match header, "*" included; None without the header.
    Anything but "*" alone or a list of entity-tags (RFC 9110 §13.1.1, §13.1.2) is 400, not ignored."""
    raw = request.headers.get(header)
    if raw is None:
        return None
    tags = [tag.strip() for tag in raw.split(",") if tag.strip()]
    if not tags:
        raise ValidationFailed(f"The {header} header is empty.", code="invalid_request")
    if tags != ["*"] and not all(ENTITY_TAG.fullmatch(tag) for tag in tags):  # "*" alone, or entity-tags
        raise ValidationFailed(f'{header} takes "*" alone or a list of entity tags ("..." or W/"...").',
                               code="invalid_request")
    return tags


def _if_match() -> list[str] | None:
    """If-Match (RFC 9110 §13.1.1). A weak tag (W/"...") never matches: If-Match compares strongly."""
    return _entity_tags("If-Match")


def _read(body: dict[str, Any]) -> Response:
    """A GET of a tenant, connection or app, conditional on If-None-Match (RFC 9110 §13.1.2): when the header
    names the current ETag, 304 with that ETag and no body, so a client polling for changes does not fetch
    what it has. Evaluated after the lookup: another tenant's resource stays 404 whatever the header says;
    and after If-Match, when sent (§13.2.2): a version other than the one named is 412, as for a write."""
    check_precondition(_if_match(), body["id"], body["version"], "resource")
    if not none_match_hit(_entity_tags("If-None-Match"), body["id"], body["version"]):
        return _tagged(body)
    resp = Response(status=304)
    resp.headers["ETag"] = etag(body["id"], body["version"])
    resp.headers.pop("Content-Type", None)  # no representation follows (RFC 9110 §15.4.5)
    return resp


def _no_content() -> Response:
    return Response(status=204)


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document(services().settings.public_url))


# -- tenants ---------------------------------------------------------------------------------------


@bp.post("/tenants")
def create_tenant() -> Response:
    key = _key()
    return _created(services().admin.create_tenant(key, _json()))


@bp.get("/tenants")
def list_tenants() -> Response:
    return jsonify(services().admin.list_tenants(_key()))


@bp.get("/tenants/<t>")
def get_tenant(t: str) -> Response:
    return _read(services().admin.get_tenant(_key(), t))


@bp.patch("/tenants/<t>")
def patch_tenant(t: str) -> Response:
    key = _key()
    return _tagged(services().admin.patch_tenant(key, t, _json(), _if_match()))


@bp.delete("/tenants/<t>")
def delete_tenant(t: str) -> Response:
    services().admin.delete_tenant(_key(), t, _if_match())
    return _no_content()


@bp.post("/tenants/<t>/admin-keys")
def create_admin_key(t: str) -> Response:
    key = _key()
    return _created(services().admin.create_admin_key(key, t, _optional_json()))


@bp.get("/tenants/<t>/admin-keys")
def list_admin_keys(t: str) -> Response:
    return jsonify(services().admin.list_admin_keys(_key(), t))


@bp.delete("/tenants/<t>/admin-keys/<key_id>")
def revoke_admin_key(t: str, key_id: str) -> Response:
    services().admin.revoke_admin_key(_key(), t, key_id)
    return _no_content()


@bp.post("/admin-keys")
def create_global_admin_key() -> Response:
    key = _key()
    if not key.is_global:
        raise Forbidden("A tenant-scoped key cannot create global keys.", code="forbidden")
    return _created(services().admin.create_admin_key(key, None, _optional_json()))


@bp.get("/admin-keys")
def list_all_admin_keys() -> Response:
    return jsonify(services().admin.list_admin_keys(_key(), None))


@bp.delete("/admin-keys/<key_id>")
def revoke_any_admin_key(key_id: str) -> Response:
    services().admin.revoke_admin_key(_key(), None, key_id)
    return _no_content()


# -- connections -----------------------------------------------------------------------------------


@bp.post("/tenants/<t>/connections")
def create_connection(t: str) -> Response:
    key = _key()
    admin = services().admin
    tenant = admin.tenant_for(key, t)
    return _created(admin.create_connection(key, tenant, _json()))


@bp.get("/tenants/<t>/connections")
def list_connections(t: str) -> Response:
    key = _key()
    admin = services().admin
    tenant = admin.tenant_for(key, t)
    items = [admin.connection_json(tenant, c) for c in admin.store.connections(tenant.id)]
    return jsonify({"connections": items})


@bp.get("/tenants/<t>/connections/<c>")
def get_connection(t: str, c: str) -> Response:
    return _read(services().admin.get_connection(_key(), t, c))


@bp.patch("/tenants/<t>/connections/<c>")
def patch_connection(t: str, c: str) -> Response:
    key = _key()
    return _tagged(services().admin.patch_connection(key, t, c, _json(), _if_match()))


@bp.delete("/tenants/<t>/connections/<c>")
def delete_connection(t: str, c: str) -> Response:
    services().admin.delete_connection(_key(), t, c, _if_match())
    return _no_content()


@bp.put("/tenants/<t>/connections/<c>/metadata")
def put_metadata(t: str, c: str) -> Response:
    key = _key()
    svc = services()
    svc.admin.connection_for(key, t, c)  # 404 before reading the body
    ctype = (request.mimetype or "").lower()
    if ctype not in METADATA_TYPES:
        raise ValidationFailed(
            "Send the IdP metadata as XML (Content-Type: application/samlmetadata+xml or application/xml).",
            code="invalid_request", status=415,
        )
    raw = _body_bytes(svc.settings.max_metadata_bytes)
    if not raw.strip():
        raise ValidationFailed("The request body is empty; send the IdP metadata XML.", code="metadata_invalid")
    entity_id = request.args.get("entity_id") or request.args.get("entityID") or None
    understood, tag = svc.admin.put_metadata(key, t, c, raw, entity_id, _if_match(),
                                            _entity_tags("If-None-Match"))
    resp = jsonify(understood)
    resp.headers["ETag"] = tag  # the connection's new version, for If-Match on its next write
    return resp


@bp.post("/tenants/<t>/connections/<c>/mapping/test")
def mapping_test(t: str, c: str) -> Response:
    key = _key()
    return jsonify(services().admin.mapping_test(key, t, c, _json()))


# -- apps ------------------------------------------------------------------------------------------


@bp.post("/tenants/<t>/apps")
def create_app(t: str) -> Response:
    key = _key()
    admin = services().admin
    tenant = admin.tenant_for(key, t)
    return _created(admin.create_app(key, tenant, _json()))


@bp.get("/tenants/<t>/apps")
def list_apps(t: str) -> Response:
    key = _key()
    admin = services().admin
    tenant = admin.tenant_for(key, t)
    return jsonify({"apps": [admin.app_json(a) for a in admin.store.apps(tenant.id)]})


@bp.get("/tenants/<t>/apps/<client_id>")
def get_app(t: str, client_id: str) -> Response:
    admin = services().admin
    _, app = admin.app_for(_key(), t, client_id)
    return _read(admin.app_json(app))


@bp.patch("/tenants/<t>/apps/<client_id>")
def patch_app(t: str, client_id: str) -> Response:
    key = _key()
    return _tagged(services().admin.patch_app(key, t, client_id, _json(), _if_match()))


@bp.delete("/tenants/<t>/apps/<client_id>")
def delete_app(t: str, client_id: str) -> Response:
    services().admin.delete_app(_key(), t, client_id, _if_match())
    return _no_content()


# -- keys and audit --------------------------------------------------------------------------------


@bp.get("/tenants/<t>/keys")
def signing_keys(t: str) -> Response:
    return jsonify(services().admin.signing_keys(_key(), t))


@bp.post("/tenants/<t>/keys/<kid>/revoke")
def revoke_signing_key(t: str, kid: str) -> Response:
    key = _key()
    admin = services().admin
    return jsonify(admin.revoke_signing_key(key, admin.tenant_for(key, t), kid))


@bp.post("/tenants/<t>/keys/rotate")
def rotate_keys(t: str) -> Response:
    key = _key()
    admin = services().admin
    tenant = admin.tenant_for(key, t)
    return jsonify(admin.rotate_keys(key, tenant, _optional_json()))


@bp.get("/tenants/<t>/audit")
def audit(t: str) -> Response:
    key = _key()
    return jsonify(services().admin.audit(key, t, request.args.to_dict()))


@bp.get("/audit")
def audit_all() -> Response:
    key = _key()
    return jsonify(services().admin.audit_all(key, request.args.to_dict()))
